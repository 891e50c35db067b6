"""
The documentation site as a reader gets it: built, served, opened in Chromium.

The site is built once per session by a real ``mkdocs build --strict`` (not
``--quiet``, which hides the warnings that ``--strict`` should fail on) into
a temporary directory. The checks read the built HTML, not the Markdown:
what matters is what the API reference shows (no raw Sphinx roles, real
defaults, an entry for every public name, no file a user does not have),
and that the state diagram draws in Chromium with every request that leaves
127.0.0.1 aborted. Without mkdocs, Playwright or Chromium the tests skip
with the reason, except under ``CI=true``, where they fail.
"""

from __future__ import annotations

import functools
import http.server
import importlib.util
import inspect
import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

import awx_connection
import awx_connection.instrumentation
import awx_connection.stores
import awx_connection.testing
from awx_connection import ConnectionManager, ConnectionState, Trigger

try:
    from playwright.sync_api import Browser, Request, Route, sync_playwright
    from playwright.sync_api import TimeoutError as PlaywrightTimeoutError
except ImportError as exc:  # the browser fixture turns this into a skip (a failure in CI)
    PLAYWRIGHT_MISSING: str | None = f"playwright is not installed ({exc})"
else:
    PLAYWRIGHT_MISSING = None

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

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
#: A Sphinx role that reached the reader instead of becoming a link.
RAW_ROLE = re.compile(r":(?:py:)?(?:meth|class|func|attr|exc|data|mod|obj|const):")
#: Files the project's authors have and its users do not.
OUTSIDE_FILES = re.compile(r"DESIGN\.md|anchors\.md|research/|\.\./shared|\bshared/")
PUBLIC_MODULES = (
    awx_connection,
    awx_connection.stores,
    awx_connection.testing,
    awx_connection.instrumentation,
)
BUILD_TIMEOUT = 150.0


def _missing(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true requires the docs-site tests: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The site, built once by ``mkdocs build --strict``; fails on any warning."""
    if importlib.util.find_spec("mkdocs") is None:
        _missing("mkdocs is not installed; pip install -e '.[test]'")
    out = tmp_path_factory.mktemp("site")
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=ROOT,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT,
        check=False,
    )
    log = done.stdout + done.stderr
    assert done.returncode == 0, log
    assert "WARNING" not in log, log
    return out


class _Text(HTMLParser):
    """The text a reader sees: everything but scripts, styles, tags and *skip*."""

    def __init__(self, skip: tuple[str, ...]) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._skipped = ("script", "style", *skip)
        self._skip = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self._skipped:
            self._skip += 1

    def handle_endtag(self, tag: str) -> None:
        if tag in self._skipped:
            self._skip -= 1

    def handle_data(self, data: str) -> None:
        if not self._skip:
            self.parts.append(data)


def visible_text(page: str, *, listings: bool = True) -> str:
    """*page*'s text; without code listings (``<pre>``) if *listings* is false."""
    parser = _Text(() if listings else ("pre",))
    parser.feed(page)
    return "".join(parser.parts)


def pages(site: Path) -> dict[str, str]:
    return {str(path.relative_to(site)): path.read_text() for path in site.rglob("*.html")}


class _Section(HTMLParser):
    """The parameter table rows of the object whose heading has id *anchor*."""

    def __init__(self, anchor: str) -> None:
        super().__init__(convert_charrefs=True)
        self.anchor = anchor
        self.inside = False
        self.depth = 0
        self.rows: list[list[str]] = []
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        classes = (dict(attrs).get("class") or "").split()
        if not self.inside and tag in ("h2", "h3") and dict(attrs).get("id") == self.anchor:
            self.inside = True
            return
        if self.inside and tag in ("h2", "h3") and "doc-heading" in classes and self.rows:
            self.inside = False  # the next object's heading
        if not self.inside:
            return
        if tag == "tr":
            self.rows.append([])
        elif tag == "td" and self.rows:
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag == "td" and self._cell is not None and self.rows:
            self.rows[-1].append(" ".join("".join(self._cell).split()))
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def parameter_defaults(api: str, anchor: str) -> dict[str, str]:
    """``{parameter: the "Default" cell}`` of the first parameter table under *anchor*."""
    section = _Section(anchor)
    section.feed(api)
    return {row[0]: row[-1] for row in section.rows if len(row) >= 4}


# -- the API reference ---------------------------------------------------------


def test_no_raw_roles_or_rest_markup_on_any_page(site: Path) -> None:
    """Every ``:class:`...``` became a link or code; no ``::`` or doubled backticks remain.

    Code listings are left out: the guides show example programs whole, and
    a docstring in a program is source, not a rendered docstring.
    """
    leaks = {}
    for name, page in pages(site).items():
        text = visible_text(page, listings=False)
        found = [m.group() for m in RAW_ROLE.finditer(text)]
        found += re.findall(r"\S::(?=\s)", text)
        found += ["``"] * text.count("``")
        if found:
            leaks[name] = found[:5]
    assert leaks == {}


def test_roles_became_links(site: Path) -> None:
    """A role naming something on the site links to its entry."""
    api = (site / "api" / "index.html").read_text()
    # ConnectionManager's docstring: "call :meth:`open` and :meth:`aclose`".
    link = re.compile(
        r'<a class="autorefs autorefs-internal"[^>]*'
        r'href="#awx_connection\.ConnectionManager\.open"[^>]*><code>open\(\)</code></a>'
    )
    assert link.search(api)
    assert 'href="#awx_connection.ConnectionManager.aclose"' in api


def test_optional_fields_show_their_defaults(site: Path) -> None:
    """attrs fields with defaults, factories or converters are not "required"."""
    api = (site / "api" / "index.html").read_text()
    manager = parameter_defaults(api, "awx_connection.ConnectionManager")
    assert manager["config"] == "required"
    assert manager["store"] == "None"
    assert manager["clock"] == "None"
    assert manager["session"] == "None"
    assert manager["keepalive"] == "True"
    assert manager["settle"] == "True"
    postgres = parameter_defaults(api, "awx_connection.stores.PostgresStore")
    assert postgres["keys"] == "required"  # keyword-only without a default: really required
    assert postgres["schema"] == "'awx_connection'"
    assert postgres["min_size"] == "1"
    text = visible_text(api)
    assert "NOTHING" not in text
    assert "attrs.field" not in text


def test_every_public_name_has_an_entry(site: Path) -> None:
    """Each name of the public modules' ``__all__`` has its own heading on the API page."""
    api = (site / "api" / "index.html").read_text()
    anchors = set(re.findall(r'id="([^"]+)"', api))
    missing = [
        f"{module.__name__}.{name}"
        for module in PUBLIC_MODULES
        for name in module.__all__
        if f"{module.__name__}.{name}" not in anchors
    ]
    assert missing == []


def test_every_public_member_of_the_manager_has_an_entry(site: Path) -> None:
    """Fields (``keepalive``, ``settle``...) and methods (``settle_unfinished``...) alike."""
    api = (site / "api" / "index.html").read_text()
    anchors = set(re.findall(r'id="([^"]+)"', api))
    fields = [a.alias for a in ConnectionManager.__attrs_attrs__ if a.init and a.alias == a.name]
    methods = [n for n, _ in inspect.getmembers(ConnectionManager) if not n.startswith("_")]
    names = sorted(set(fields) | set(methods))
    assert {"keepalive", "settle", "keepalive_pass", "settle_unfinished"} <= set(names)
    missing = [n for n in names if f"awx_connection.ConnectionManager.{n}" not in anchors]
    assert missing == []


def test_no_reference_to_files_outside_the_repo(site: Path) -> None:
    """Neither the site nor the source cites a file a user of the library does not have."""
    cited: dict[str, list[str]] = {}
    for path in [*site.rglob("*.html"), *site.rglob("*.json"), *site.rglob("*.xml")]:
        found = OUTSIDE_FILES.findall(path.read_text())
        if found:
            cited[str(path.relative_to(site))] = found
    for path in (ROOT / "src").rglob("*.py"):
        found = OUTSIDE_FILES.findall(path.read_text())
        if found:
            cited[str(path.relative_to(ROOT))] = found
    assert cited == {}
    # And the repository's own pages the source names exist.
    named = {
        match
        for path in (ROOT / "src").rglob("*.py")
        for match in re.findall(r"\bdocs/[\w-]+\.md\b", path.read_text())
    }
    assert named, "the source names no docs page at all: the pattern is wrong"
    assert sorted(n for n in named if not (ROOT / n).is_file()) == []


# -- the state diagram, offline, in Chromium -----------------------------------


def test_vendored_mermaid_is_the_pinned_one(site: Path) -> None:
    """The Mermaid the site ships is the version docs/_vendor_mermaid.py pins, with its license."""
    script = ROOT / "docs" / "_vendor_mermaid.py"
    spec = importlib.util.spec_from_file_location("_vendor_mermaid", script)
    assert spec is not None and spec.loader is not None
    pin = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(pin)
    shipped = site / "assets" / "vendor" / "mermaid"
    assert pin.sha256(shipped / "mermaid.min.js") == pin.SHA256
    assert f'version:"{pin.VERSION}"' in (shipped / "mermaid.min.js").read_text()
    assert "MIT License" in (shipped / "LICENSE").read_text()
    page = (site / "state-machine" / "index.html").read_text()
    assert '<script src="../assets/vendor/mermaid/mermaid.min.js">' in page


@pytest.fixture(scope="module")
def site_url(site: Path) -> Iterator[str]:
    """The built site over real HTTP on an ephemeral port."""

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Quiet, directory=str(site))
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if PLAYWRIGHT_MISSING is not None:
        _missing(f"{PLAYWRIGHT_MISSING}; pip install -e '.[test]'")
    if not CHROMIUM.is_file():
        _missing(f"no Chromium at {CHROMIUM}; apt-get install chromium (or set AWX_TEST_CHROMIUM)")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            launched.close()


#: Runs inside the diagram's (closed) shadow root: what was drawn, and where.
MEASURE = """
function () {
  const svg = this.querySelector("svg");
  if (!svg) return null;
  const box = (e) => { const r = e.getBoundingClientRect();
                       return [r.left, r.top, r.right, r.bottom]; };
  const labelled = (selector) => [...svg.querySelectorAll(selector)]
      .filter((e) => e.textContent.trim())
      .map((e) => ({text: e.textContent.trim(), box: box(e)}));
  return {
    text: svg.textContent,
    states: labelled("g.node"),
    edgeLabels: labelled("g.edgeLabel"),
    boxTitles: labelled("g.cluster-label, .cluster .cluster-label"),
  };
}
"""


def _diagram(page: Any) -> dict[str, Any] | None:
    """The drawn SVG, read through DevTools: Material attaches it to a closed shadow root."""
    cdp = page.context.new_cdp_session(page)
    document = cdp.send("DOM.getDocument", {"depth": -1, "pierce": True})
    hosts: list[dict[str, Any]] = []

    def walk(node: dict[str, Any]) -> None:
        attributes = node.get("attributes", [])
        classes = dict(zip(attributes[::2], attributes[1::2], strict=True)).get("class", "")
        if node.get("localName") == "div" and "mermaid" in classes.split():
            hosts.append(node)
        for child in node.get("children", []):
            walk(child)
        for root in node.get("shadowRoots", []):
            walk(root)

    walk(document["root"])
    assert len(hosts) == 1, f"expected one rendered diagram, found {len(hosts)}"
    (root,) = hosts[0]["shadowRoots"]
    handle = cdp.send("DOM.resolveNode", {"nodeId": root["nodeId"]})
    result = cdp.send(
        "Runtime.callFunctionOn",
        {
            "objectId": handle["object"]["objectId"],
            "functionDeclaration": MEASURE,
            "returnByValue": True,
        },
    )
    value: dict[str, Any] | None = result["result"].get("value")
    return value


def _overlap(a: list[float], b: list[float], slack: float = 1.0) -> bool:
    return min(a[2], b[2]) - max(a[0], b[0]) > slack and min(a[3], b[3]) - max(a[1], b[1]) > slack


@pytest.mark.browser
def test_state_diagram_renders_offline_without_overlaps(
    site_url: str, browser: Browser, tmp_path: Path
) -> None:
    """With every non-local request aborted, the diagram is an SVG that reads cleanly."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    outside: list[str] = []
    failed: list[str] = []

    def local_only(route: Route, request: Request) -> None:
        if urlsplit(request.url).hostname in ("127.0.0.1", "localhost"):
            route.continue_()
        else:
            outside.append(request.url)
            route.abort()

    page.route("**/*", local_only)
    page.on("requestfailed", lambda request: failed.append(request.url))
    try:
        page.goto(f"{site_url}/state-machine/")
        try:
            # Material swaps the <pre class="mermaid"> source for a drawn <div>.
            page.wait_for_selector("div.mermaid", state="attached", timeout=15_000)
        except PlaywrightTimeoutError:
            drawn = None
        else:
            drawn = _diagram(page)
        page.screenshot(path=str(tmp_path / "page.png"), full_page=True)
        visible = page.locator("body").inner_text()
    finally:
        context.close()

    assert outside == [], "the page reached for another host"
    assert failed == []
    assert drawn is not None, "the diagram was not drawn"
    for state in ConnectionState:
        assert state.value in drawn["text"]
    for trigger in Trigger:
        assert trigger.value in drawn["text"]
    names = {label["text"] for label in drawn["states"]}
    assert {state.value for state in ConnectionState} <= names
    # Mermaid's source is gone from the page: it was replaced by the drawing.
    assert "stateDiagram" not in visible
    assert "-->" not in visible

    # Reads cleanly: no label sits on another label or on a state.
    labels = drawn["edgeLabels"] + drawn["boxTitles"]
    clashes = [
        (a["text"], b["text"])
        for i, a in enumerate(labels)
        for b in labels[i + 1 :] + drawn["states"]
        if _overlap(a["box"], b["box"])
    ]
    assert clashes == [], f"overlapping labels (screenshot: {tmp_path / 'page.png'})"
    assert len(drawn["edgeLabels"]) >= 10  # the arrows are labelled at all
