"""
The partner app's HTML: the dashboard, the onboarding step, a connection's
history, and the error page.

Every value that reaches a page goes through :func:`html.escape` (or, in the
browser, ``textContent``): connection reasons and account ids come from the
provider and the callback URL, which are input like any other. The inline
style and scripts carry the response's CSP nonce, so the Content-Security-Policy
can forbid every other script. No page ever shows a token, code or secret:
they render :class:`~awx_connection.Connection` snapshots and
:class:`~awx_connection.ConnectionEvent` values, which hold none; the
embedded-components code goes to the onboarding page's script as JSON, on
request, and is never written into HTML.

The layout works from 390 px wide up: below 48rem the connections table
turns into one card per connection (each cell labelled), and long ids wrap.
"""

from __future__ import annotations

import html
import json
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime

from awx_connection import TERMINAL_STATES, Connection, ConnectionEvent, ConnectionState

__all__ = [
    "MAX_CUSTOMER",
    "NEEDS_CUSTOMER",
    "USABLE_STATES",
    "dashboard_page",
    "error_page",
    "format_time",
    "history_page",
    "onboarding_page",
]

#: Longest customer reference the connect form accepts.
MAX_CUSTOMER = 100

#: States in which a connection holds tokens, so Disconnect makes sense.
USABLE_STATES = frozenset({ConnectionState.ACTIVE, ConnectionState.REFRESHING})
#: States only the customer can leave (through Reconnect, ``reauthorize()``).
NEEDS_CUSTOMER = TERMINAL_STATES

_DASH = "\u2014"
#: The cells of a connection row, with their labels (the card layout shows them).
_CELLS = (
    ("id", "Connection"),
    ("customer", "Customer"),
    ("state", "State"),
    ("onboarding", "Onboarding"),
    ("account", "Account"),
    ("expires", "Access token expires"),
    ("reason", "Why"),
    ("action", ""),
)

_STYLE = """
*, *::before, *::after { box-sizing: border-box; }
body { font: 15px/1.45 system-ui, sans-serif; margin: 2rem auto; max-width: 72rem;
       padding: 0 1rem; color: #1c2330; }
header { display: flex; align-items: center; gap: .75rem; flex-wrap: wrap; }
header h1 { margin: 0 auto 0 0; font-size: 1.5rem; }
button, a.button { font: inherit; padding: .45rem .9rem; border-radius: .4rem; cursor: pointer;
         border: 1px solid #612fff; background: #612fff; color: #fff; text-decoration: none;
         display: inline-block; }
button.secondary, a.button.secondary { background: #fff; color: #612fff; }
button.danger { background: #fff; color: #b3261e; border-color: #b3261e; }
td.action button, td.action a { padding: .2rem .6rem; font-size: .9rem; }
td.action { display: flex; gap: .4rem; flex-wrap: wrap; align-items: center; }
form { margin: 0; }
form.connect { display: flex; gap: .5rem; flex-wrap: wrap; }
input { font: inherit; padding: .4rem .6rem; border: 1px solid #c5cad3; border-radius: .4rem;
        min-width: 0; }
form.connect input { flex: 1 1 14rem; }
.mode { color: #5a6272; margin: .4rem 0 1.2rem; overflow-wrap: anywhere; }
#live { font-size: .85rem; color: #5a6272; }
#live[data-state="open"] { color: #1e7f4f; }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; padding: .45rem .5rem; border-bottom: 1px solid #e3e6ec;
         vertical-align: top; overflow-wrap: anywhere; }
th { font-size: .8rem; text-transform: uppercase; letter-spacing: .04em; color: #5a6272; }
td.state { font-weight: 600; }
tr[data-state="active"] td.state { color: #1e7f4f; }
tr[data-state="refreshing"] td.state { color: #8a6d00; }
tr[data-state="revoked"] td.state, tr[data-state="invalidated"] td.state,
tr[data-state="expired"] td.state, tr[data-state="failed"] td.state,
tr[data-state="denied"] td.state { color: #b3261e; }
tr[data-onboarding="onboarded"] td.onboarding { color: #1e7f4f; font-weight: 600; }
td.reason { color: #5a6272; font-size: .9rem; }
code { font-size: .85rem; overflow-wrap: anywhere; }
#feed, ol.history { font-size: .9rem; padding-left: 1.2rem; }
#feed li, ol.history li { overflow-wrap: anywhere; }
time { color: #5a6272; font-variant-numeric: tabular-nums; }
.error { border-left: 4px solid #b3261e; padding: .2rem 1rem; }
#kyc { border: 1px solid #e3e6ec; border-radius: .5rem; padding: 1rem; margin: 1rem 0;
       max-width: 32rem; }
.awx-kyc { display: grid; gap: .75rem; }
.awx-kyc h3 { margin: 0; }
.awx-field { display: grid; gap: .25rem; }
#onboarding-status[data-state="onboarded"] { color: #1e7f4f; font-weight: 600; }
@media (max-width: 48rem) {
  body { margin: 1rem auto; }
  #connections thead { display: none; }
  #connections, #connections tbody, #connections tr, #connections td { display: block; }
  #connections tr { border: 1px solid #e3e6ec; border-radius: .5rem; margin: 0 0 .75rem;
                    padding: .25rem .5rem; }
  #connections td { border: 0; padding: .2rem 0; }
  #connections td[data-label]:not([data-label=""])::before { content: attr(data-label);
    display: block; font-size: .75rem; font-weight: 400; text-transform: uppercase;
    letter-spacing: .04em;
    color: #5a6272; }
  #connections td.action { display: flex; padding-top: .4rem; }
}
"""

# Kept in sync by hand with _row() and _actions() below: the same cells,
# classes, labels and buttons.
_SCRIPT = """
"use strict";
// Set once per page load; the browser tests check that live updates keep it.
window.dashboardLoadId = Date.now().toString(36) + Math.random().toString(36).slice(2);

const USABLE = new Set(["active", "refreshing"]);
const NEEDS_CUSTOMER = new Set(%(needs_customer)s);
const CELLS = %(cells)s;
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
  row.dataset.onboarding = "";
  for (const [name, label] of CELLS) {
    const cell = document.createElement("td");
    cell.className = name;
    cell.dataset.label = label;
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

function postButton(id, path, label, className) {
  const form = document.createElement("form");
  form.method = "post";
  form.action = "/connections/" + encodeURIComponent(id) + "/" + path;
  const button = document.createElement("button");
  button.type = "submit";
  button.className = className;
  button.textContent = label;
  form.append(button);
  return form;
}

function link(id, path, label, className) {
  const anchor = document.createElement("a");
  anchor.href = "/connections/" + encodeURIComponent(id) + "/" + path;
  anchor.className = className;
  anchor.textContent = label;
  return anchor;
}

function setActions(row) {
  const id = row.dataset.connectionId;
  const state = row.dataset.state;
  const parts = [];
  if (USABLE.has(state) && row.dataset.onboarding !== "onboarded") {
    parts.push(link(id, "onboarding", "Continue onboarding", "button"));
  }
  if (USABLE.has(state)) parts.push(postButton(id, "disconnect", "Disconnect", "danger"));
  if (NEEDS_CUSTOMER.has(state)) parts.push(postButton(id, "reconnect", "Reconnect", ""));
  parts.push(link(id, "history", "History", "history"));
  row.querySelector(".action").replaceChildren(...parts);
}

function setOnboarding(row, status) {
  if (status === undefined) return;
  row.dataset.onboarding = status || "";
  row.querySelector(".onboarding").textContent = status || "\\u2014";
}

// fields: a connection snapshot, or the same names taken from an event.
function show(row, fields) {
  row.dataset.state = fields.state;
  row.querySelector(".state").textContent = fields.state;
  if (fields.account_id) row.querySelector(".account").textContent = fields.account_id;
  if (fields.external_id) row.querySelector(".customer").textContent = fields.external_id;
  row.querySelector(".reason").textContent = fields.reason;
  setOnboarding(row, fields.onboarding);
  const expires = row.querySelector(".expires");
  if (!USABLE.has(fields.state)) {
    expires.textContent = "\\u2014";
  } else if ("access_expires_at" in fields) {
    expires.textContent = formatTime(fields.access_expires_at);
  }
  setActions(row);
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

function appendFeed(text, at) {
  document.getElementById("feed-empty")?.remove();
  const item = document.createElement("li");
  const time = document.createElement("time");
  time.textContent = formatTime(at);
  item.append(time, " " + text);
  feed.append(item);
}

function describe(event) {
  const from = event.source || "\\u2014";
  return event.connection_id + ": " + from + " \\u2192 " + event.dest + " (" + event.reason + ")";
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
  appendFeed(describe(event), event.at);
  refreshRow(event.connection_id);
});
source.addEventListener("onboarding", (message) => {
  const change = JSON.parse(message.data);
  const row = findRow(change.connection_id);
  if (row) {
    setOnboarding(row, change.onboarding);
    setActions(row);
  }
  appendFeed(change.connection_id + ": onboarding " + change.onboarding, Date.now() / 1000);
});
window.addEventListener("pagehide", () => source.close());
"""

# The onboarding step: fetch a fresh code, start Airwallex.js, mount KYC,
# and say "onboarded" when the account.active webhook has moved the row on.
_ONBOARDING_SCRIPT = """
"use strict";
const connectionId = %(connection_id)s;
const status = document.getElementById("onboarding-status");

// The webhook may beat the form's own "success" here: never step back from onboarded.
function say(text, state) {
  if (status.dataset.state === "onboarded") return;
  status.textContent = text;
  status.dataset.state = state;
}

async function start() {
  const sdk = window.AirwallexComponentsSDK;
  if (!sdk) return say("Airwallex.js did not load.", "error");
  const path = "/connections/" + encodeURIComponent(connectionId) + "/onboarding/code";
  const response = await fetch(path, { method: "POST", headers: { Accept: "application/json" } });
  const options = await response.json();
  if (!response.ok) return say(options.error || "Onboarding could not start.", "error");
  try {
    await sdk.init(options);
    const element = await sdk.createElement("kyc", {});
    element.on("success", () => {
      say("Submitted; waiting for Airwallex to confirm\\u2026", "submitted");
    });
    element.on("error", (error) => say(error.message, "error"));
    element.mount("kyc");
    say("Fill in the form to finish onboarding.", "ready");
  } catch (error) {
    say((error.code ? error.code + ": " : "") + error.message, "error");
  }
}

const events = new EventSource("/events");
events.addEventListener("onboarding", (message) => {
  const change = JSON.parse(message.data);
  if (change.connection_id === connectionId && change.onboarding === "onboarded") {
    say("Onboarded: Airwallex confirmed the account is active.", "onboarded");
    events.close();
  }
});
window.addEventListener("pagehide", () => events.close());
if (status.dataset.state !== "onboarded") start();
"""


def format_time(seconds: float | None) -> str:
    """A UTC timestamp for people, or a dash when there is none."""
    if seconds is None:
        return _DASH
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _actions(connection: Connection, onboarding: str | None) -> str:
    """The row's buttons: the same as the script's setActions()."""
    cid = _e(connection.id)
    parts = []
    usable = connection.state in USABLE_STATES
    if usable and onboarding != "onboarded":
        parts.append(
            f'<a class="button" href="/connections/{cid}/onboarding">Continue onboarding</a>'
        )
    if usable:
        parts.append(
            f'<form method="post" action="/connections/{cid}/disconnect">'
            '<button type="submit" class="danger">Disconnect</button></form>'
        )
    if connection.state in NEEDS_CUSTOMER:
        parts.append(
            f'<form method="post" action="/connections/{cid}/reconnect">'
            '<button type="submit" class="">Reconnect</button></form>'
        )
    parts.append(f'<a class="history" href="/connections/{cid}/history">History</a>')
    return "".join(parts)


def _row(connection: Connection, onboarding: str | None) -> str:
    usable = connection.state in USABLE_STATES
    values = {
        "id": f"<code>{_e(connection.id)}</code>",
        "customer": _e(connection.external_id or _DASH),
        "state": _e(connection.state.value),
        "onboarding": _e(onboarding or _DASH),
        "account": _e(connection.account_id or _DASH),
        "expires": _e(format_time(connection.access_expires_at) if usable else _DASH),
        "reason": _e(connection.reason),
        "action": _actions(connection, onboarding),
    }
    cells = "".join(
        f'<td class="{name}" data-label="{_e(label)}">{values[name]}</td>' for name, label in _CELLS
    )
    return (
        f'<tr class="connection" data-connection-id="{_e(connection.id)}"'
        f' data-state="{_e(connection.state.value)}" data-sequence="{connection.sequence}"'
        f' data-onboarding="{_e(onboarding or "")}">{cells}</tr>'
    )


def _event_line(event: ConnectionEvent) -> str:
    source = event.source.value if event.source is not None else _DASH
    return (
        f"<li><time>{_e(format_time(event.at))}</time> "
        f"{_e(event.connection_id)}: {_e(source)} \u2192 {_e(event.dest.value)}"
        f" ({_e(event.reason)})</li>"
    )


def _document(title: str, body: str, *, nonce: str, script: str = "", head: str = "") -> str:
    scripts = f'<script nonce="{_e(nonce)}">{script}</script>' if script else ""
    return (
        "<!doctype html>\n<html lang=en><head><meta charset=utf-8>"
        '<meta name=viewport content="width=device-width, initial-scale=1">'
        f"<title>{_e(title)}</title>"
        f'<style nonce="{_e(nonce)}">{_STYLE}</style>{head}</head>\n'
        f"<body>\n{body}\n{scripts}</body></html>\n"
    )


def dashboard_page(
    connections: Iterable[Connection],
    *,
    onboarding: Callable[[str], str | None],
    recent: Sequence[ConnectionEvent],
    mode: str,
    nonce: str,
) -> str:
    """
    The dashboard: connect buttons, every connection, and the feed (recent
    history first, then live events).

    Args:
        connections: What to list, newest first.
        onboarding: The onboarding status of a connection id.
        recent: Stored events to start the feed with, oldest first.
        mode: Which Airwallex this app talks to, in words.
        nonce: The response's CSP nonce for the inline style and script.
    """
    rows = "".join(_row(c, onboarding(c.id)) for c in connections) or (
        f'<tr id="empty"><td colspan="{len(_CELLS)}">No connections yet.</td></tr>'
    )
    head = "".join(f"<th>{_e(label)}</th>" for _, label in _CELLS)
    feed = "".join(_event_line(e) for e in recent)
    empty = (
        "" if recent else '<p id="feed-empty" class="mode">Events appear here as they happen.</p>'
    )
    script = _SCRIPT % {
        "needs_customer": json.dumps(sorted(s.value for s in NEEDS_CUSTOMER)),
        "cells": json.dumps(list(_CELLS)),
    }
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
        f'<table id="connections"><thead><tr>{head}</tr></thead>\n'
        f"<tbody>{rows}</tbody></table>\n"
        "<h2>Events</h2>\n"
        f'{empty}<ol id="feed">{feed}</ol>'
    )
    return _document("Airwallex connections", body, nonce=nonce, script=script)


def onboarding_page(connection: Connection, *, status: str | None, sdk_url: str, nonce: str) -> str:
    """
    The "Continue onboarding" step: Airwallex.js loads from *sdk_url* (by
    nonce), the page's script fetches a fresh code and mounts the KYC
    component in ``#kyc``.
    """
    done = status == "onboarded"
    text = (
        "Onboarded: Airwallex confirmed the account is active."
        if done
        else "Starting the Airwallex verification\u2026"
    )
    state = "onboarded" if done else "starting"
    who = connection.external_id or "the customer"
    body = (
        "<header><h1>Continue onboarding</h1>"
        '<a class="button secondary" href="/">Back to the dashboard</a></header>\n'
        f'<p class="mode">Verifying {_e(who)} (connection <code>{_e(connection.id)}</code>,'
        f" account {_e(connection.account_id or _DASH)}) with Airwallex.</p>\n"
        f'<p id="onboarding-status" role="status" data-state="{state}">{_e(text)}</p>\n'
        '<div id="kyc" aria-live="polite"></div>'
    )
    # json.dumps leaves "</" alone, which could end the script element early.
    literal = json.dumps(connection.id).replace("<", "\\u003c")
    script = _ONBOARDING_SCRIPT % {"connection_id": literal}
    head = f'<script src="{_e(sdk_url)}" nonce="{_e(nonce)}"></script>'
    return _document("Continue onboarding", body, nonce=nonce, script=script, head=head)


def history_page(connection: Connection, events: Sequence[ConnectionEvent], *, nonce: str) -> str:
    """Every stored event of *connection*, oldest first."""
    items = "".join(_event_line(e) for e in events) or "<li>No events stored.</li>"
    body = (
        "<header><h1>Connection history</h1>"
        '<a class="button secondary" href="/">Back to the dashboard</a></header>\n'
        f'<p class="mode">Connection <code>{_e(connection.id)}</code>, now'
        f" <strong>{_e(connection.state.value)}</strong>"
        f" (customer {_e(connection.external_id or _DASH)},"
        f" account {_e(connection.account_id or _DASH)}).</p>\n"
        f'<ol class="history">{items}</ol>'
    )
    return _document("Connection history", body, nonce=nonce)


def error_page(title: str, message: str, *, nonce: str) -> str:
    """A plain error page: what went wrong in words, and the way back."""
    body = (
        f'<div class="error"><h1>{_e(title)}</h1><p>{_e(message)}</p></div>\n'
        '<p><a href="/">Back to the dashboard</a></p>'
    )
    return _document(title, body, nonce=nonce)
