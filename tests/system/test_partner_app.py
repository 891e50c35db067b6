"""
The partner web app (examples/partner_app) in a real browser.

Each test starts ``python -m examples.partner_app`` on free ports, with its
own embedded fake Airwallex and store, and drives Debian's Chromium through
Playwright like a customer would: buttons, the fake's consent page, the
redirect back, the live event feed. Playwright never downloads a browser
here: it launches ``/usr/bin/chromium`` (``AWX_TEST_CHROMIUM`` overrides).
Without Chromium or Playwright the tests skip with the reason, except under
``CI=true``, where they fail: CI must never pass by skipping them.
"""

from __future__ import annotations

import json
import os
import queue
import re
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

try:
    from playwright.sync_api import Browser, Page, expect, sync_playwright
except ImportError as exc:  # the browser fixture turns this into a skip (a failure in CI)
    PLAYWRIGHT_MISSING: str | None = f"playwright is not installed ({exc})"
else:
    PLAYWRIGHT_MISSING = None

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = Path(os.environ.get("AWX_TEST_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--no-sandbox",  # CI runs as root, where Chromium's sandbox refuses to start
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
#: Prefixes of the fake's codes, access and refresh tokens, embedded-components
#: codes and component sessions: never in a log.
SECRET_PREFIXES = ("awx_ac_", "awx_at_", "awx_rt_", "awx_ec_", "awx_cs_")
STARTUP_TIMEOUT = 30.0


@dataclass(frozen=True)
class PartnerApp:
    """A running partner app: where it is, where its fake is, and its log."""

    url: str
    fake_url: str
    log: Path

    def disconnect_at_provider(self, account_id: str) -> int:
        """The customer unlinks the app in Airwallex (the fake's admin endpoint)."""
        request = urllib.request.Request(
            self.fake_url + "/_fake/disconnect",
            data=json.dumps({"account_id": account_id}).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            revoked: int = json.load(response)["revoked"]
        return revoked


def _unavailable() -> str | None:
    if PLAYWRIGHT_MISSING is not None:
        return f"{PLAYWRIGHT_MISSING}; pip install -e '.[test]'"
    if not CHROMIUM.is_file():
        return f"no Chromium at {CHROMIUM}; apt-get install chromium (or set AWX_TEST_CHROMIUM)"
    return None


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Headless Debian Chromium, shared by the module's tests (each gets its own context)."""
    reason = _unavailable()
    if reason is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true requires the browser tests: {reason}")
        # A developer machine without Chromium still gets a useful run.
        pytest.skip(reason)
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    """A fresh browser context and tab: no cookies or history shared between tests."""
    context = browser.new_context()
    context.set_default_timeout(10_000)
    expect.set_options(timeout=10_000)
    try:
        yield context.new_page()
    finally:
        context.close()


def _pump(stream: Iterator[str], lines: queue.Queue[str | None]) -> None:
    for line in stream:
        lines.put(line)
    lines.put(None)


@pytest.fixture
def partner_app(tmp_path: Path) -> Iterator[PartnerApp]:
    """The app's one documented command, on free ports; stopped with SIGTERM afterwards."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWX_")}  # fake mode
    log = tmp_path / "partner_app.log"
    with log.open("wb") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "examples.partner_app", "--port", "0", "--fake-port", "0"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
        )
    assert process.stdout is not None
    lines: queue.Queue[str | None] = queue.Queue()
    reader = threading.Thread(target=_pump, args=(process.stdout, lines), daemon=True)
    reader.start()
    try:
        output = ""
        while (match := re.search(r"open (http://\S+)", output)) is None:
            line = lines.get(timeout=STARTUP_TIMEOUT)
            assert line is not None, f"the app exited early:\n{output}\n{log.read_text()}"
            output += line
        fake = re.search(r"Fake Airwallex: (http://\S+)", output)
        assert fake is not None, output
        yield PartnerApp(url=match.group(1), fake_url=fake.group(1), log=log)
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        reader.join(5)
        process.stdout.close()
    assert 0 == process.returncode, log.read_text()


def connect(
    page: Page, app: PartnerApp, button: str = "Connect Airwallex", customer: str = ""
) -> str:
    """Click *button* on the dashboard, Allow on the fake's consent page; return the consent URL."""
    page.goto(app.url)
    page.get_by_label("Customer reference").fill(customer)
    page.get_by_role("button", name=button).click()
    page.wait_for_url(re.compile(re.escape(app.fake_url + "/oauth/authorize?")))
    consent_url = page.url
    page.get_by_role("button", name="Allow").click()
    page.wait_for_url(app.url)
    return consent_url


@pytest.mark.browser
def test_connect_then_provider_disconnect_turns_row_revoked_live(
    partner_app: PartnerApp, page: Page, tmp_path: Path
) -> None:
    """Connect + Allow shows the account active; a provider disconnect turns it revoked live."""
    errors: list[str] = []  # the app's script errors and CSP violations (not the fake's)
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on(
        "console",
        lambda message: (
            errors.append(message.text)
            if message.type == "error"
            and not message.location["url"].startswith(partner_app.fake_url)
            else None
        ),
    )
    page.goto(partner_app.url)
    page.get_by_role("button", name="Connect Airwallex").click()
    page.wait_for_url(re.compile(re.escape(partner_app.fake_url + "/oauth/authorize?")))
    expect(page.get_by_role("heading", level=1)).to_contain_text("wants to access")
    page.get_by_role("button", name="Allow").click()
    page.wait_for_url(partner_app.url)

    row = page.locator("tr.connection")
    expect(row).to_have_count(1)
    expect(row.locator("td.state")).to_have_text("active")
    account_id = row.locator("td.account").inner_text()
    assert re.fullmatch(r"acct_[\w-]+", account_id), account_id
    expect(row.locator("td.expires")).to_contain_text("UTC")
    expect(page.locator("#live")).to_have_attribute("data-state", "open")
    load_id = page.evaluate("window.dashboardLoadId")
    page.evaluate("window.noReloadMarker = 'still here'")

    assert 1 == partner_app.disconnect_at_provider(account_id)

    expect(row.locator("td.state")).to_have_text("revoked")
    expect(row.locator("td.reason")).to_contain_text("webhook connection.disconnected")
    expect(row.locator("td.expires")).to_have_text("\u2014")
    expect(row.get_by_role("button", name="Disconnect")).to_have_count(0)
    expect(page.locator("#feed li").last).to_contain_text("active \u2192 revoked")
    assert "still here" == page.evaluate("window.noReloadMarker")  # no navigation happened
    assert load_id == page.evaluate("window.dashboardLoadId")

    screenshot = tmp_path / "dashboard.png"
    page.screenshot(path=screenshot, full_page=True)
    assert screenshot.read_bytes().startswith(PNG_SIGNATURE)

    assert [] == errors
    log = partner_app.log.read_text()
    assert "GET /airwallex/callback 302" in log
    assert not [p for p in (*SECRET_PREFIXES, "code=", "state=") if p in log], log


@pytest.mark.browser
def test_sign_up_connects_a_new_account(partner_app: PartnerApp, page: Page) -> None:
    """Sign up sends sign_up=true to Airwallex and activates a new account, not the usual one."""
    connect(page, partner_app)
    usual = page.locator("tr.connection td.account").inner_text()

    consent_url = connect(page, partner_app, button="Sign up for Airwallex", customer="acme-42")

    assert ["true"] == parse_qs(urlsplit(consent_url).query).get("sign_up")
    rows = page.locator("tr.connection")
    expect(rows).to_have_count(2)
    newest = rows.first  # newest first
    expect(newest.locator("td.state")).to_have_text("active")
    expect(newest.locator("td.customer")).to_have_text("acme-42")
    expect(newest.locator("td.account")).to_have_text(re.compile(r"^acct_[\w-]+$"))
    assert usual != newest.locator("td.account").inner_text()


@pytest.mark.browser
def test_disconnect_button_turns_row_revoked(partner_app: PartnerApp, page: Page) -> None:
    """The row's Disconnect button revokes the connection and the row shows it."""
    markup = '<img src=x onerror="window.injected=1">'
    connect(page, partner_app, customer=markup)
    row = page.locator("tr.connection")
    expect(row.locator("td.state")).to_have_text("active")
    expect(row.locator("td.customer")).to_have_text(markup)  # shown as text, never parsed
    assert page.evaluate("window.injected") is None

    row.get_by_role("button", name="Disconnect").click()

    expect(row.locator("td.state")).to_have_text("revoked")
    expect(row.locator("td.reason")).to_have_text("disconnected from the dashboard")
    expect(row.get_by_role("button", name="Disconnect")).to_have_count(0)


@pytest.mark.browser
def test_refused_callbacks_show_an_error_page(partner_app: PartnerApp, page: Page) -> None:
    """Deny, or a forged callback, shows an error page in words: no traceback, no code."""
    page.goto(partner_app.url)
    page.get_by_role("button", name="Connect Airwallex").click()
    page.get_by_role("button", name="Deny").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Not connected")
    expect(page.locator("body")).to_contain_text("access_denied")

    forged = page.goto(partner_app.url + "airwallex/callback?state=forged&code=awx_ac_stolen")
    assert forged is not None
    assert 400 == forged.status
    expect(page.get_by_role("heading", level=1)).to_have_text("Callback refused")
    content = page.content()
    assert "Traceback" not in content
    assert "awx_ac_stolen" not in content

    page.goto(partner_app.url)
    expect(page.locator("tr.connection td.state")).to_have_text("denied")


def _errors_of(page: Page, app: PartnerApp) -> list[str]:
    """Collect the app's script errors and CSP violations (not the fake's consent page's)."""
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on(
        "console",
        lambda message: (
            errors.append(message.text)
            if message.type == "error" and not message.location["url"].startswith(app.fake_url)
            else None
        ),
    )
    return errors


def _png_size(path: Path) -> tuple[int, int]:
    """Width and height from a PNG's IHDR chunk."""
    data = path.read_bytes()
    assert data.startswith(PNG_SIGNATURE)
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


@pytest.mark.browser
def test_continue_onboarding_runs_embedded_kyc_and_the_row_moves_to_onboarded(
    partner_app: PartnerApp, page: Page
) -> None:
    """
    Connect, Continue onboarding (a code from embedded_authorization(), the
    fake's stand-in Airwallex.js), fill the KYC form: account.active moves
    the row to onboarded, live on an open dashboard and after a reload.
    """
    errors = _errors_of(page, partner_app)
    connect(page, partner_app, customer="acme-7")
    row = page.locator("tr.connection")
    expect(row.locator("td.state")).to_have_text("active")
    expect(row.locator("td.onboarding")).to_have_text("\u2014")
    dashboard = page.context.new_page()  # a second tab stays on the dashboard
    dashboard_errors = _errors_of(dashboard, partner_app)
    dashboard.goto(partner_app.url)
    expect(dashboard.locator("#live")).to_have_attribute("data-state", "open")

    row.get_by_role("link", name="Continue onboarding").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Continue onboarding")
    form = page.get_by_role("form", name="Airwallex verification")
    expect(form.get_by_label("Legal business name")).to_have_value("Fake Pty Ltd")
    dashboard_row = dashboard.locator("tr.connection")
    expect(dashboard_row.locator("td.onboarding")).to_have_text("started")
    form.get_by_label("Legal business name").fill("Acme Seven Pty Ltd")
    form.get_by_label("Country (ISO code)").fill("AU")
    form.get_by_role("button", name="Submit verification").click()

    status = page.locator("#onboarding-status")
    expect(status).to_have_attribute("data-state", "onboarded")
    expect(status).to_contain_text("Onboarded")
    expect(dashboard_row.locator("td.onboarding")).to_have_text("onboarded")  # live, no reload
    expect(dashboard_row.get_by_role("link", name="Continue onboarding")).to_have_count(0)
    expect(dashboard.locator("#feed li").last).to_contain_text("onboarding onboarded")

    page.get_by_role("link", name="Back to the dashboard").click()
    page.wait_for_url(partner_app.url)
    expect(row.locator("td.onboarding")).to_have_text("onboarded")
    expect(row).to_have_attribute("data-onboarding", "onboarded")
    expect(row.get_by_role("link", name="Continue onboarding")).to_have_count(0)
    assert [] == errors
    assert [] == dashboard_errors
    log = partner_app.log.read_text()
    assert "POST /connections/" in log
    assert "/onboarding/code 200" in log
    assert "account active, onboarding done" in log
    assert not [p for p in SECRET_PREFIXES if p in log], log


@pytest.mark.browser
def test_onboarding_a_revoked_connection_says_so(partner_app: PartnerApp, page: Page) -> None:
    """The onboarding step of a connection that is no longer connected shows why, in words."""
    connect(page, partner_app)
    row = page.locator("tr.connection")
    onboarding_url = row.get_by_role("link", name="Continue onboarding").get_attribute("href")
    row.get_by_role("button", name="Disconnect").click()
    expect(row.locator("td.state")).to_have_text("revoked")

    assert onboarding_url is not None
    page.goto(partner_app.url.rstrip("/") + onboarding_url)

    expect(page.locator("#onboarding-status")).to_contain_text("not connected")
    expect(page.get_by_role("form", name="Airwallex verification")).to_have_count(0)


@pytest.mark.browser
def test_reconnect_buttons_bring_a_connection_back(partner_app: PartnerApp, page: Page) -> None:
    """
    Revoked by the dashboard or live by a provider disconnect, the row offers
    Reconnect; it goes through consent again and the same connection is active.
    """
    errors = _errors_of(page, partner_app)
    connect(page, partner_app, customer="cust-r")
    row = page.locator("tr.connection")
    connection_id = row.get_attribute("data-connection-id")
    expect(row.get_by_role("button", name="Reconnect")).to_have_count(0)

    row.get_by_role("button", name="Disconnect").click()  # rendered by the server
    expect(row.locator("td.state")).to_have_text("revoked")
    row.get_by_role("button", name="Reconnect").click()
    page.wait_for_url(re.compile(re.escape(partner_app.fake_url + "/oauth/authorize?")))
    page.get_by_role("button", name="Allow").click()
    page.wait_for_url(partner_app.url)
    expect(page.locator("tr.connection")).to_have_count(1)
    expect(row).to_have_attribute("data-connection-id", connection_id or "")
    expect(row.locator("td.state")).to_have_text("active")
    expect(row.get_by_role("button", name="Reconnect")).to_have_count(0)

    expect(page.locator("#live")).to_have_attribute("data-state", "open")
    # Two grants: the one the dashboard's Disconnect left at Airwallex, and the new one.
    assert 2 == partner_app.disconnect_at_provider(row.locator("td.account").inner_text())
    expect(row.locator("td.state")).to_have_text("revoked")  # live, by the script
    row.get_by_role("button", name="Reconnect").click()
    page.get_by_role("button", name="Allow").click()
    page.wait_for_url(partner_app.url)
    expect(row.locator("td.state")).to_have_text("active")
    expect(row.locator("td.customer")).to_have_text("cust-r")
    assert [] == errors


@pytest.mark.browser
def test_the_feed_starts_with_history_and_each_connection_has_its_own(
    partner_app: PartnerApp, page: Page
) -> None:
    """A page load shows recent events, not an empty feed; History lists one connection's."""
    connect(page, partner_app)
    page.reload()
    items = page.locator("#feed li")
    expect(items).to_have_count(3)  # pending, authorized, active: stored, shown at load
    expect(items.last).to_contain_text("authorized \u2192 active")
    expect(page.locator("#feed-empty")).to_have_count(0)

    page.locator("tr.connection").get_by_role("link", name="History").click()

    expect(page.get_by_role("heading", level=1)).to_have_text("Connection history")
    history = page.locator("ol.history li")
    expect(history).to_have_count(3)
    expect(history.first).to_contain_text("\u2014 \u2192 pending")
    with urllib.request.urlopen(page.url.replace("/history", "/events"), timeout=10) as response:
        events = json.load(response)
    assert ["pending", "authorized", "active"] == [e["dest"] for e in events]


@pytest.mark.browser
def test_no_horizontal_scroll_at_390px(
    partner_app: PartnerApp, browser: Browser, tmp_path: Path
) -> None:
    """Dashboard, onboarding and history fit a 390 px phone: no page is wider than the screen."""
    context = browser.new_context(viewport={"width": 390, "height": 844})
    context.set_default_timeout(10_000)
    try:
        page = context.new_page()
        connect(page, partner_app, customer="a-customer-reference-that-is-rather-long-" * 2)
        connect(page, partner_app, button="Sign up for Airwallex", customer="second")
        page.locator("tr.connection").last.get_by_role("button", name="Disconnect").click()
        expect(page.locator("tr.connection").last.locator("td.state")).to_have_text("revoked")
        pages = {"dashboard": page.url}
        first = page.locator("tr.connection").first
        for name in ("onboarding", "history"):
            href = first.locator(f"a[href$='/{name}']").get_attribute("href")
            assert href is not None
            pages[name] = partner_app.url.rstrip("/") + href
        for name, url in pages.items():
            page.goto(url)
            if name == "onboarding":
                expect(page.get_by_role("form", name="Airwallex verification")).to_be_visible()
            overflow = page.evaluate(
                "document.documentElement.scrollWidth - document.documentElement.clientWidth"
            )
            assert 0 == overflow, f"{name} is {overflow}px wider than the screen"
            shot = tmp_path / f"{name}-390.png"
            page.screenshot(path=shot, full_page=True)
            assert 390 == _png_size(shot)[0], name
        page.goto(pages["dashboard"])
        card = page.locator("tr.connection").first
        box = card.bounding_box()
        assert box is not None and box["width"] <= 390
        assert "none" == page.locator("#connections thead").evaluate(
            "element => getComputedStyle(element).display"
        )
    finally:
        context.close()
