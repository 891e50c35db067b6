"""
The partner app's HTML: the dashboard and the error page.

Every value that reaches a page goes through :func:`html.escape` (or, in the
browser, ``textContent``): connection reasons and account ids come from the
provider and the callback URL, which are input like any other. The inline
style and script carry the response's CSP nonce, so the Content-Security-Policy
can forbid every other script. No page ever shows a token, code or secret:
they render :class:`~awx_connection.Connection` snapshots, which hold none.
"""

from __future__ import annotations

import html
from collections.abc import Iterable
from datetime import UTC, datetime

from awx_connection import Connection, ConnectionState

__all__ = ["MAX_CUSTOMER", "USABLE_STATES", "dashboard_page", "error_page", "format_time"]

#: Longest customer reference the connect form accepts.
MAX_CUSTOMER = 100

#: States in which a connection holds tokens, so Disconnect makes sense.
USABLE_STATES = frozenset({ConnectionState.ACTIVE, ConnectionState.REFRESHING})

_DASH = "\u2014"

_STYLE = """
body { font: 15px/1.45 system-ui, sans-serif; margin: 2rem auto; max-width: 70rem;
       padding: 0 1rem; color: #1c2330; }
header { display: flex; align-items: center; gap: .75rem; flex-wrap: wrap; }
header h1 { margin: 0 auto 0 0; font-size: 1.5rem; }
button { font: inherit; padding: .45rem .9rem; border-radius: .4rem; cursor: pointer;
         border: 1px solid #612fff; background: #612fff; color: #fff; }
button.secondary { background: #fff; color: #612fff; }
button.danger { background: #fff; color: #b3261e; border-color: #b3261e; padding: .2rem .6rem; }
form { margin: 0; }
form.connect { display: flex; gap: .5rem; }
input { font: inherit; padding: .4rem .6rem; border: 1px solid #c5cad3; border-radius: .4rem; }
.mode { color: #5a6272; margin: .4rem 0 1.2rem; }
#live { font-size: .85rem; color: #5a6272; }
#live[data-state="open"] { color: #1e7f4f; }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; padding: .45rem .5rem; border-bottom: 1px solid #e3e6ec;
         vertical-align: top; }
th { font-size: .8rem; text-transform: uppercase; letter-spacing: .04em; color: #5a6272; }
td.state { font-weight: 600; }
tr[data-state="active"] td.state { color: #1e7f4f; }
tr[data-state="refreshing"] td.state { color: #8a6d00; }
tr[data-state="revoked"] td.state, tr[data-state="invalidated"] td.state,
tr[data-state="expired"] td.state, tr[data-state="failed"] td.state,
tr[data-state="denied"] td.state { color: #b3261e; }
td.reason { color: #5a6272; font-size: .9rem; }
code { font-size: .85rem; }
#feed { font-size: .9rem; padding-left: 1.2rem; }
#feed time { color: #5a6272; font-variant-numeric: tabular-nums; }
.error { border-left: 4px solid #b3261e; padding: .2rem 1rem; }
"""

# Kept in sync by hand with _row() below: the same cells, the same classes.
_SCRIPT = """
"use strict";
// Set once per page load; the browser tests check that live updates keep it.
window.dashboardLoadId = Date.now().toString(36) + Math.random().toString(36).slice(2);

const USABLE = new Set(["active", "refreshing"]);
const CELLS = ["id", "customer", "state", "account", "expires", "reason", "action"];
const tbody = document.querySelector("#connections tbody");
const feed = document.getElementById("feed");
const live = document.getElementById("live");

function formatTime(seconds) {
  if (seconds === null || seconds === undefined) return "\\u2014";
  return new Date(seconds * 1000).toISOString().slice(0, 19).replace("T", " ") + " UTC";
}

function findRow(id) {
  for (const row of tbody.querySelectorAll("tr.connection")) {
    if (row.dataset.connectionId === id) return row;
  }
  return null;
}

function newRow(id) {
  const row = document.createElement("tr");
  row.className = "connection";
  row.dataset.connectionId = id;
  row.dataset.sequence = "0";
  for (const name of CELLS) {
    const cell = document.createElement("td");
    cell.className = name;
    cell.textContent = name === "action" ? "" : "\\u2014";
    row.append(cell);
  }
  const code = document.createElement("code");
  code.textContent = id;
  row.querySelector(".id").replaceChildren(code);
  tbody.prepend(row);
  document.getElementById("empty")?.remove();
  return row;
}

function setAction(row, usable) {
  const cell = row.querySelector(".action");
  const form = cell.querySelector("form");
  if (usable && form === null) {
    const created = document.createElement("form");
    created.method = "post";
    created.action = "/connections/" + encodeURIComponent(row.dataset.connectionId) + "/disconnect";
    const button = document.createElement("button");
    button.type = "submit";
    button.className = "danger";
    button.textContent = "Disconnect";
    created.append(button);
    cell.append(created);
  } else if (!usable && form !== null) {
    cell.replaceChildren();
  }
}

// fields: a connection snapshot, or the same names taken from an event.
function show(row, fields) {
  row.dataset.state = fields.state;
  row.querySelector(".state").textContent = fields.state;
  if (fields.account_id) row.querySelector(".account").textContent = fields.account_id;
  if (fields.external_id) row.querySelector(".customer").textContent = fields.external_id;
  row.querySelector(".reason").textContent = fields.reason;
  const usable = USABLE.has(fields.state);
  const expires = row.querySelector(".expires");
  if (!usable) {
    expires.textContent = "\\u2014";
  } else if ("access_expires_at" in fields) {
    expires.textContent = formatTime(fields.access_expires_at);
  }
  setAction(row, usable);
}

// Snapshots and events may arrive in any order: never show an older one.
function upsert(connection) {
  const row = findRow(connection.id) || newRow(connection.id);
  if (connection.sequence < Number(row.dataset.sequence)) return;
  row.dataset.sequence = String(connection.sequence);
  show(row, connection);
}

function applyEvent(event) {
  const row = findRow(event.connection_id) || newRow(event.connection_id);
  if (event.sequence <= Number(row.dataset.sequence)) return;
  row.dataset.sequence = String(event.sequence);
  show(row, {
    state: event.dest,
    account_id: event.account_id,
    external_id: event.external_id,
    reason: event.reason,
  });
}

function appendFeed(event) {
  document.getElementById("feed-empty")?.remove();
  const item = document.createElement("li");
  const time = document.createElement("time");
  time.textContent = formatTime(event.at);
  const from = event.source || "\\u2014";
  item.append(time, " " + event.connection_id + ": " + from + " \\u2192 " + event.dest +
    " (" + event.reason + ")");
  feed.append(item);
}

async function getJSON(path) {
  const response = await fetch(path, { headers: { Accept: "application/json" } });
  return response.ok ? response.json() : null;
}

// The event carries no token expiry; the connection's snapshot does.
async function refreshRow(id) {
  const connection = await getJSON("/connections/" + encodeURIComponent(id));
  if (connection) upsert(connection);
}

// On every (re)connection of the stream: catch up on what it may have missed.
async function sync() {
  const connections = await getJSON("/connections");
  for (const connection of connections || []) upsert(connection);
}

const source = new EventSource("/events");
source.addEventListener("open", () => {
  live.textContent = "\\u25cf live";
  live.dataset.state = "open";
  sync();
});
source.addEventListener("error", () => {
  live.textContent = "reconnecting\\u2026";
  live.dataset.state = "reconnecting";
});
source.addEventListener("connection", (message) => {
  const event = JSON.parse(message.data);
  applyEvent(event);
  appendFeed(event);
  refreshRow(event.connection_id);
});
window.addEventListener("pagehide", () => source.close());
"""


def format_time(seconds: float | None) -> str:
    """A UTC timestamp for people, or a dash when there is none."""
    if seconds is None:
        return _DASH
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _row(connection: Connection) -> str:
    usable = connection.state in USABLE_STATES
    expires = format_time(connection.access_expires_at) if usable else _DASH
    action = (
        f'<form method="post" action="/connections/{_e(connection.id)}/disconnect">'
        '<button type="submit" class="danger">Disconnect</button></form>'
        if usable
        else ""
    )
    return (
        f'<tr class="connection" data-connection-id="{_e(connection.id)}"'
        f' data-state="{_e(connection.state.value)}" data-sequence="{connection.sequence}">'
        f'<td class="id"><code>{_e(connection.id)}</code></td>'
        f'<td class="customer">{_e(connection.external_id or _DASH)}</td>'
        f'<td class="state">{_e(connection.state.value)}</td>'
        f'<td class="account">{_e(connection.account_id or _DASH)}</td>'
        f'<td class="expires">{_e(expires)}</td>'
        f'<td class="reason">{_e(connection.reason)}</td>'
        f'<td class="action">{action}</td></tr>'
    )


def _document(title: str, body: str, *, nonce: str, script: str = "") -> str:
    scripts = f'<script nonce="{_e(nonce)}">{script}</script>' if script else ""
    return (
        "<!doctype html>\n<html lang=en><head><meta charset=utf-8>"
        '<meta name=viewport content="width=device-width, initial-scale=1">'
        f"<title>{_e(title)}</title>"
        f'<style nonce="{_e(nonce)}">{_STYLE}</style></head>\n'
        f"<body>\n{body}\n{scripts}</body></html>\n"
    )


def dashboard_page(connections: Iterable[Connection], *, mode: str, nonce: str) -> str:
    """
    The dashboard: connect buttons, every connection, and the live feed.

    Args:
        connections: What to list, newest first.
        mode: Which Airwallex this app talks to, in words.
        nonce: The response's CSP nonce for the inline style and script.
    """
    rows = "".join(_row(c) for c in connections) or (
        '<tr id="empty"><td colspan="7">No connections yet.</td></tr>'
    )
    body = (
        "<header><h1>Airwallex connections</h1>"
        '<span id="live" data-state="connecting">connecting\u2026</span>'
        '<form method="post" action="/connect" class="connect">'
        f'<input name="customer" maxlength="{MAX_CUSTOMER}" placeholder="customer reference'
        ' (optional)" aria-label="Customer reference">'
        '<button type="submit">Connect Airwallex</button>'
        '<button type="submit" formaction="/signup" class="secondary">Sign up for Airwallex'
        "</button></form></header>\n"
        f'<p class="mode">{_e(mode)}</p>\n'
        '<table id="connections"><thead><tr><th>Connection</th><th>Customer</th><th>State</th>'
        "<th>Account</th><th>Access token expires</th><th>Why</th><th></th></tr></thead>\n"
        f"<tbody>{rows}</tbody></table>\n"
        "<h2>Live events</h2>\n"
        '<p id="feed-empty" class="mode">Events appear here as they happen.</p>'
        '<ol id="feed"></ol>'
    )
    return _document("Airwallex connections", body, nonce=nonce, script=_SCRIPT)


def error_page(title: str, message: str, *, nonce: str) -> str:
    """A plain error page: what went wrong in words, and the way back."""
    body = (
        f'<div class="error"><h1>{_e(title)}</h1><p>{_e(message)}</p></div>\n'
        '<p><a href="/">Back to the dashboard</a></p>'
    )
    return _document(title, body, nonce=nonce)
