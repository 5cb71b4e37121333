"""``melbo explore`` in a real browser: Debian's Chromium driven by Playwright (no browser is
downloaded) against the app serving a tiny random-init Llama and six features.

One server and one browser per module; every page runs with all requests intercepted, and any
request that leaves the app's origin is recorded and refused. Screenshots of each page go to
``$MELBO_SCREENSHOTS/explore_*.png`` (``MELBO_SCREENSHOTS=bench/results`` for the
committed ones).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from explore_fixtures import MAX_NEW_TOKENS, XSS, make_model, make_run

CHROMIUM = "/usr/bin/chromium"
if not Path(CHROMIUM).is_file():
    pytest.skip(f"{CHROMIUM} is missing: install the Debian package 'chromium' to run the browser tests",
                allow_module_level=True)
playwright_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (the dev extra has it)")
pytest.importorskip("starlette", reason="the explore extra (starlette, uvicorn) is not installed")
pytest.importorskip("uvicorn", reason="the explore extra (starlette, uvicorn) is not installed")

from melbo.explore.explorer import Explorer  # noqa: E402
from melbo.explore.notes import NOTES_FILE  # noqa: E402
from melbo.explore.run import load_run  # noqa: E402
from melbo.explore.server import BackgroundServer  # noqa: E402

# Screenshots go to $MELBO_SCREENSHOTS when set (e.g. bench/results for the closing note), else
# to a temporary directory: a test run never rewrites tracked files.
SHOTS = Path(os.environ.get("MELBO_SCREENSHOTS") or tempfile.mkdtemp(prefix="melbo-shots-"))
TIMEOUT_MS = 60_000  # generous: on cores shared with other jobs Chromium can stall for seconds


@pytest.fixture(scope="module")
def model_tok() -> tuple[Any, Any]:
    return make_model()


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory, model_tok: tuple[Any, Any]) -> Path:
    return make_run(tmp_path_factory.mktemp("explore"), model_tok[0])


def _serve(run_dir: Path, model_tok: tuple[Any, Any]) -> BackgroundServer:
    model, tok = model_tok
    return BackgroundServer(Explorer(load_run(run_dir), model, tok, max_new_tokens=MAX_NEW_TOKENS))


@pytest.fixture(scope="module")
def server(run_dir: Path, model_tok: tuple[Any, Any]) -> Iterator[BackgroundServer]:
    with _serve(run_dir, model_tok) as srv:
        yield srv


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with playwright_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-dev-shm-usage"])
        yield b
        b.close()


class Traffic:
    """Every request a context makes; those outside ``base`` are refused and kept in ``external``."""

    def __init__(self, base: str) -> None:
        self.base, self.local, self.external = base, [], []  # type: ignore[var-annotated]

    def route(self, route: Any) -> None:
        url = route.request.url
        if url.startswith(self.base + "/") or url == self.base:
            self.local.append(url)
            route.continue_()
        else:
            self.external.append(url)
            route.abort()


@pytest.fixture()
def page(browser: Any, server: BackgroundServer) -> Iterator[Any]:
    """A fresh browser context logged in through the printed URL; no request may leave the app.

    The app's Content-Security-Policy is bypassed here (the tests evaluate their own scripts):
    model text must stay inert by escaping alone."""
    ctx = browser.new_context(viewport={"width": 1100, "height": 720}, bypass_csp=True)
    traffic = Traffic(server.base)
    ctx.route("**/*", traffic.route)
    pg = ctx.new_page()
    pg.set_default_timeout(TIMEOUT_MS)
    pg.traffic = traffic
    pg.goto(server.url)
    pg.wait_for_selector("body[data-ready=list]")
    yield pg
    ctx.close()
    assert traffic.local, "the route interception saw no request at all"
    assert traffic.external == [], f"the page requested other origins: {traffic.external}"


def _column(pg: Any, key: str) -> list[str]:
    return pg.locator(f"#features tbody td[data-key={key}]").all_inner_texts()


def _indices(pg: Any) -> list[int]:
    return [int(x) for x in pg.locator("#features tbody tr").evaluate_all("rows => rows.map(r => r.dataset.index)")]


def _wait_done(pg: Any) -> None:
    pg.wait_for_selector("body[data-state=done]")


def _cells(pg: Any, prefix: str) -> list[str]:
    return pg.locator(f"#completions td[id^='{prefix}']").all_inner_texts()


def test_the_list_renders_every_feature_and_sorts_by_a_clicked_column(page: Any) -> None:
    assert "token=" not in page.url  # dropped from the address bar
    assert len(_indices(page)) == 6
    # default: discover's behaviour score, best first (feature 2: 0.9, 1: 0.5, 3: 0.3, 0: 0.1; none for 4, 5)
    assert _indices(page)[:4] == [2, 1, 3, 0]
    page.click("th[data-key=alpha2]")
    alpha2 = [float(x) for x in _column(page, "alpha2")]
    assert alpha2 == sorted(alpha2, reverse=True) and _indices(page)[0] == 3  # α = 3.0
    page.click("th[data-key=alpha2]")
    assert _indices(page)[0] == 4  # ascending: α = 0.25
    page.fill("#filter", "phrase 3")
    assert _indices(page) == [3]
    page.fill("#filter", "")
    page.fill("#search", "f0 text")
    page.click("#search-form button[type=submit]")
    page.wait_for_function("document.querySelectorAll('#features tbody tr').length === 1")
    assert _indices(page) == [0]
    page.click("#search-clear")
    page.screenshot(path=str(SHOTS / "explore_list.png"))


def test_a_feature_page_streams_its_completion_token_by_token(page: Any) -> None:
    # record every text the first steered cell shows, before the page's script runs
    page.add_init_script("""
      window.__seen = [];
      new MutationObserver(() => {
        const c = document.getElementById('s-0-0');
        if (c && c.textContent && window.__seen[window.__seen.length - 1] !== c.textContent) window.__seen.push(c.textContent);
      }).observe(document, {subtree: true, childList: true, characterData: true});
    """)
    page.goto(page.traffic.base + "/feature/2?scale=2.5")  # not cached anywhere
    _wait_done(page)
    seen = page.evaluate("window.__seen")
    final = page.inner_text("#s-0-0")
    assert final and seen[-1] == final
    assert len(seen) >= 3, f"expected the completion to grow over several events, saw {seen}"
    assert all(final.startswith(s) for s in seen), seen  # each a prefix of the next
    assert page.inner_text("#scale-value") == "2.5 × R"
    page.screenshot(path=str(SHOTS / "explore_feature.png"), full_page=True)


def test_moving_the_slider_changes_the_steered_completion_not_the_unsteered(page: Any) -> None:
    page.goto(page.traffic.base + "/feature/0?scale=1.5")
    _wait_done(page)
    before_s, before_u = _cells(page, "s-0-"), _cells(page, "u-")
    page.focus("#scale")
    page.keyboard.press("Home")  # the slider's minimum: -4 × R
    page.wait_for_function("document.getElementById('scale-value').textContent === '-4 × R'")
    page.wait_for_function("document.body.dataset.state === 'running'")
    _wait_done(page)
    after_s, after_u = _cells(page, "s-0-"), _cells(page, "u-")
    assert after_u == before_u
    assert after_s != before_s
    # the plot shows the scales measured on this page (1.5, -4 and the unsteered 0)
    assert page.locator("#curve circle.point").count() >= 3


def test_two_features_side_by_side(page: Any) -> None:
    page.goto(page.traffic.base + "/feature/2?scale=1.5&compare=3")
    _wait_done(page)
    assert page.locator("#completions thead th").all_inner_texts() == ["prompt", "unsteered", "feature 2", "feature 3"]
    a, b = _cells(page, "s-0-"), _cells(page, "s-1-")
    assert len(a) == len(b) == 3 and all(a) and all(b) and a != b
    page.screenshot(path=str(SHOTS / "explore_compare.png"), full_page=True)


def test_model_text_and_typed_prompts_stay_inert(page: Any) -> None:
    # the list shows discover's signature of feature 1, an XSS payload, as text
    row = page.locator("#features tbody tr[data-index='1'] td[data-key=signature]")
    assert row.inner_text() == XSS
    # feature 1 at 1 R is cached with the payload as its completion; type the payload as a prompt too
    page.goto(page.traffic.base + "/feature/1?scale=1")
    _wait_done(page)
    page.fill("#prompt", XSS)
    page.click("#run")
    page.wait_for_function("document.body.dataset.state === 'running'")
    _wait_done(page)
    assert _cells(page, "s-0-")[:3] == [XSS] * 3
    assert page.locator("#completions td.prompt").all_inner_texts()[-1] == XSS
    page.fill("#label", XSS)
    page.click("#save-notes")
    page.wait_for_function("document.getElementById('notes-saved').textContent === 'saved'")
    page.goto(page.traffic.base + "/")
    page.wait_for_selector("body[data-ready=list]")
    assert page.locator("#features tbody tr[data-index='1'] td[data-key=label]").inner_text() == XSS
    assert page.evaluate("window.__xss") is None
    assert page.locator("img, script:not([src])").count() == 0
    page.goto(page.traffic.base + "/feature/1")
    page.fill("#label", "")
    page.click("#save-notes")
    page.wait_for_function("document.getElementById('notes-saved').textContent === 'saved'")


def test_a_request_without_the_token_is_refused(browser: Any, server: BackgroundServer) -> None:
    ctx = browser.new_context()
    try:
        pg = ctx.new_page()
        for path in ("/", "/feature/0", "/static/app.js", "/api/features", "/api/generate?feature=0&scale=1"):
            resp = pg.goto(server.base + path)
            assert resp is not None and resp.status == 403, path
            assert "access token" in pg.content()
        assert pg.goto(server.base + "/?token=" + "x" * len(server.token)).status == 403  # type: ignore[union-attr]
    finally:
        ctx.close()

    def status(path: str, headers: dict[str, str], data: bytes | None = None) -> int:
        req = urllib.request.Request(server.base + path, headers=headers, data=data)
        try:
            with urllib.request.urlopen(req) as r:
                return int(r.status)
        except urllib.error.HTTPError as err:
            return int(err.code)

    assert status("/api/run", {}) == 403
    wrong_last = "A" if server.token[-1] != "A" else "B"  # one character off, never the token itself
    assert status("/api/run", {"X-Melbo-Token": server.token[:-1] + wrong_last}) == 403
    assert status("/api/run", {"X-Melbo-Token": server.token}) == 200
    body = json.dumps({"label": "x", "note": ""}).encode()
    assert status("/api/notes/0", {"Content-Type": "application/json", "Cookie": "melbo=1"}, body) == 403
    assert status("/api/notes/0", {"X-Melbo-Token": server.token, "Content-Type": "application/json",
                                   "Origin": "http://evil.example"}, body) == 403


def test_a_label_survives_a_restart(page: Any, browser: Any, run_dir: Path, model_tok: tuple[Any, Any]) -> None:
    page.goto(page.traffic.base + "/feature/3")
    page.wait_for_selector("body[data-ready=feature]")
    page.fill("#label", "pirate talk")
    page.fill("#note", "strongest at 2 R")
    page.click("#save-notes")
    page.wait_for_function("document.getElementById('notes-saved').textContent === 'saved'")
    stored = json.loads((run_dir / NOTES_FILE).read_text())
    assert stored["features"]["3"] == {"label": "pirate talk", "note": "strongest at 2 R"}
    # a second server on the same directory (a restart: a new process would read the same file)
    with _serve(run_dir, model_tok) as again:
        ctx = browser.new_context()
        try:
            pg = ctx.new_page()
            pg.set_default_timeout(TIMEOUT_MS)
            pg.goto(again.url)
            pg.wait_for_selector("body[data-ready=list]")
            assert pg.locator("#features tbody tr[data-index='3'] td[data-key=label]").inner_text() == "pirate talk"
            pg.check("#labelled")
            assert [int(x) for x in pg.locator("#features tbody tr").evaluate_all(
                "rows => rows.map(r => r.dataset.index)")] == [3]
        finally:
            ctx.close()


def test_export_writes_a_new_features_directory_each_time(page: Any, run_dir: Path) -> None:
    from melbo.features import Features

    for k in (3, 0):
        page.check(f"#features tbody tr[data-index='{k}'] input.pick")
    page.click("#export")
    page.wait_for_function("document.getElementById('export-info').textContent.includes('exported')")
    page.click("#export")
    page.wait_for_function("document.getElementById('export-info').textContent.includes('subset-002')")
    exports = sorted((run_dir / "explore-exports").iterdir())
    assert [p.name for p in exports][-2:] == ["subset-001", "subset-002"]
    full, sub = Features.load(run_dir / "features"), Features.load(exports[-1])
    picked = sub.extra["explore_export"]["indices"]
    assert sorted(picked) == [0, 3]
    assert sub.V.equal(full.V[:, picked])
    shutil.rmtree(run_dir / "explore-exports")
