"""The HTML report: rendered without a model, escaped, self-contained, and checked in headless Chromium.

How "no network request" is checked
-----------------------------------
1. Statically: no element of the page has a ``src``/``href``/``srcset``/``action``/… that is
   not an in-page ``#fragment`` or a ``data:`` URL, there is no ``<script>``, ``<link>``,
   ``<iframe>``, ``<object>``, ``<embed>``, ``<base>``, and the CSS has no ``@import`` or
   ``url(…)`` other than ``url(#…)`` — and the page carries ``Content-Security-Policy:
   default-src 'none'``, so a browser would refuse any request anyway.
2. Dynamically: Chromium is driven over the DevTools protocol (``--remote-debugging-pipe``)
   with the Network domain enabled, and every ``Network.requestWillBeSent`` event of the page
   is recorded while it loads. The report — also a copy with its CSP removed, so a stray
   reference would be requested rather than silently blocked — must request nothing but its
   own file. A control page with one ``<img src="http://…">`` must show that request, which
   proves the method sees page requests. (Page events only: the browser's own background
   traffic — update checks, network time — belongs to no page and cannot cause a false alarm,
   which is why a catch-all proxy was not used.)
"""

from __future__ import annotations

import contextlib
import fcntl
import html
import html.parser
import json
import os
import re
import select
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from tiny_models import tiny_model

from melbo.cli import main
from melbo.evaluate.analysis import Analysis
from melbo.features import Features
from melbo.models.fingerprint import model_fingerprint
from melbo.report import Completions, render_report, write_report
from melbo.testing import tiny_tokenizer

CHROMIUM = "/usr/bin/chromium"
needs_chromium = pytest.mark.skipif(
    shutil.which(CHROMIUM) is None,
    reason=f"{CHROMIUM} is missing: install the Debian package 'chromium' to run the render test",
)
EVIL = "<script>alert('x')</script>"


def _features(m: int = 12, d: int = 16) -> Features:
    g = torch.Generator().manual_seed(0)
    V = torch.nn.functional.normalize(torch.randn(d, m, generator=g), dim=0)
    U = torch.nn.functional.normalize(torch.randn(d, m, generator=g) + 0.5, dim=0)
    return Features(U=U, V=V, alpha=torch.rand(m, generator=g) + 0.1, R=4.0, method="exponential", source_layer=2,
                    target_layer=5, positions=3, objective=[1.0, 2.5, 3.1, 3.2], prompts_hash="f" * 64,
                    model={"model_type": "llama", "note": EVIL}, extra={"seed": 0})


def _analysis(scores: list[float]) -> Analysis:
    row = {"individual_mean": 1.0, "individual_max": 2.0, "avg": 1.5, "svd": 1.7}
    return Analysis(
        config={"threshold": 0.5, "token_a": "Sure", "token_b": "Sorry", "n_prompts": 4}, unsteered=-1.0,
        feature_scores=scores, ranking=sorted(range(len(scores)), key=lambda i: -scores[i]), selected=[1, 0],
        set_rule="above_threshold", n_above=2,
        geometry={"V": {"condition_number": 3.0, "abs_cos_mean": 0.2, "abs_cos_sd": 0.1},
                  "U": {"condition_number": 4.0, "abs_cos_mean": 0.3, "abs_cos_sd": 0.1}},
        table={"adding": {**row, "svd+": 1.7, "svd-": -0.3}, "ablating_sources": row, "ablating_targets": row},
    )


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    feats = _features()
    scores = [float(x) for x in torch.linspace(-2, 3, feats.n_factors)]
    comp = Completions(
        prompts=["How do I pick a lock?", f"Write {EVIL} an email"],
        unsteered=["I'm sorry, but I can't help with that.", "I cannot do that."],
        steered={11: ["Sure, here is how: first …", f"Sure! {EVIL} <b>bold</b> & more"]},
        unsteered_scores=[-3.0, -4.0], steered_scores={11: [5.0, 2.0]},
    )
    path = tmp_path_factory.mktemp("report") / "report.html"
    write_report(feats, path, scores=scores, completions=comp, analysis=_analysis(scores), title=f"Report {EVIL}")
    return path


class _Refs(html.parser.HTMLParser):
    URL_ATTRS = {"src", "href", "xlink:href", "srcset", "action", "formaction", "poster", "data", "background",
                 "cite", "ping", "manifest", "icon", "longdesc", "codebase", "archive"}
    BANNED = {"script", "link", "iframe", "object", "embed", "base", "frame", "audio", "video", "source", "track"}

    def __init__(self) -> None:
        super().__init__()
        self.external: list[str] = []
        self.banned: list[str] = []
        self.tags: dict[str, int] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags[tag] = self.tags.get(tag, 0) + 1
        if tag in self.BANNED:
            self.banned.append(tag)
        for name, value in attrs:
            v = (value or "").strip()
            if name in self.URL_ATTRS and v and not v.startswith(("#", "data:")):
                self.external.append(f"<{tag} {name}={v!r}>")
            if name == "style" and re.search(r"url\((?!\s*['\"]?#)|@import", v):
                self.external.append(f"<{tag} style={v!r}>")


def test_report_is_self_contained_and_escaped(report: Path) -> None:
    text = report.read_text(encoding="utf-8")
    refs = _Refs()
    refs.feed(text)
    assert refs.external == [] and refs.banned == []
    styles = " ".join(re.findall(r"<style[^>]*>(.*?)</style>", text, flags=re.S))
    assert not re.search(r"@import|url\((?!#)", styles)
    assert "default-src 'none'" in html.unescape(text)  # CSP: the browser would refuse any request
    assert EVIL not in text and "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;" in text
    assert "&lt;b&gt;bold&lt;/b&gt; &amp; more" in text
    assert refs.tags.get("svg", 0) >= 4  # objective, cosines, alpha, scores
    ids = re.findall(r'\bid="([^"]+)"', text)
    assert len(ids) == len(set(ids)), "ids collide between inline figures"


def test_report_without_scores_or_objective_still_renders() -> None:
    feats = _features(m=1)
    feats = Features(U=feats.U, V=feats.V, alpha=feats.alpha, R=1.0, method="linear", source_layer=0, target_layer=1)
    text = render_report(feats)
    assert "No training curve" in text and text.count("<svg") == 2  # cosines (no pairs) and alpha
    assert "Top 1 features by α²" in text and 'id="completions"' not in text


BROWSER_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync")


def _high_fd(fd: int) -> int:
    high = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
    os.close(fd)
    return high


class _DevTools:
    """Chromium driven over ``--remote-debugging-pipe`` (DevTools protocol on fds 3/4; no extra packages).

    The child's ends of two pipes are duplicated onto fds 3 and 4 before exec; all pipe fds
    are first moved above 9 (and marked close-on-exec) so the two dup2 calls cannot clobber
    each other and nothing else leaks into the browser.
    """

    def __init__(self, profile: Path) -> None:
        to_chrome, self._w = (_high_fd(fd) for fd in os.pipe())
        self._r, from_chrome = (_high_fd(fd) for fd in os.pipe())
        args = [CHROMIUM, *BROWSER_FLAGS, f"--user-data-dir={profile}", "--remote-debugging-pipe", "about:blank"]

        def pipes_to_3_and_4() -> None:  # runs in the child before exec
            os.dup2(to_chrome, 3)
            os.dup2(from_chrome, 4)

        self.proc = subprocess.Popen(args, preexec_fn=pipes_to_3_and_4, close_fds=False,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(to_chrome)
        os.close(from_chrome)
        self._buf = b""
        self._n = 0
        self.events: list[dict[str, Any]] = []

    def _read(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no answer from chromium")
            if select.select([self._r], [], [], left)[0]:
                chunk = os.read(self._r, 1 << 16)
                if not chunk:
                    raise EOFError("chromium closed the DevTools pipe")
                self._buf += chunk
        msg, self._buf = self._buf.split(b"\0", 1)
        return json.loads(msg)  # type: ignore[no-any-return]

    def send(self, method: str, params: dict[str, Any] | None = None, session: str | None = None) -> dict[str, Any]:
        self._n += 1
        msg: dict[str, Any] = {"id": self._n, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self._w, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + 30
        while True:
            m = self._read(deadline)
            if m.get("id") == self._n:
                if "error" in m:
                    raise RuntimeError(f"{method}: {m['error']}")
                return m.get("result", {})  # type: ignore[no-any-return]
            self.events.append(m)

    def requests_while_loading(self, url: str) -> list[str]:
        """Open ``url`` in a fresh page and return the URL of every request it made until load."""
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        self.send("Network.enable", session=session)
        self.send("Page.enable", session=session)
        self.events.clear()
        self.send("Page.navigate", {"url": url}, session=session)
        deadline = time.monotonic() + 30
        while not any(e.get("method") == "Page.loadEventFired" and e.get("sessionId") == session for e in self.events):
            self.events.append(self._read(deadline))
        return [e["params"]["request"]["url"] for e in self.events
                if e.get("method") == "Network.requestWillBeSent" and e.get("sessionId") == session]

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.send("Browser.close")
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._r)
        os.close(self._w)


def _dump_dom(url: str, profile: Path) -> str:
    cmd = [CHROMIUM, *BROWSER_FLAGS, f"--user-data-dir={profile}", "--dump-dom", url]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


@needs_chromium
def test_report_renders_in_headless_chromium(report: Path, tmp_path: Path) -> None:
    dom = _dump_dom(report.as_uri(), tmp_path / "profile")
    refs = _Refs()
    refs.feed(dom)
    assert refs.tags.get("svg", 0) >= 4 and refs.tags.get("table", 0) >= 4
    assert 'class="completions"' in dom and 'class="analysis"' in dom and "Sure, here is how" in dom
    assert EVIL not in dom  # still text after parsing, not an element


@needs_chromium
def test_report_makes_no_network_request_in_chromium(report: Path, tmp_path: Path) -> None:
    # Without its CSP, so that a stray reference would be requested rather than blocked.
    text = re.sub(r'<meta http-equiv="Content-Security-Policy"[^>]*>', "", report.read_text(encoding="utf-8"))
    bare = tmp_path / "no_csp.html"
    bare.write_text(text, encoding="utf-8")
    control = tmp_path / "control.html"
    control.write_text('<!DOCTYPE html><html><body><img src="http://melbo-test.invalid/x.png"></body></html>')
    browser = _DevTools(tmp_path / "profile")
    try:
        for page in (report, bare):
            made = browser.requests_while_loading(page.as_uri())
            assert made == [page.as_uri()], f"{page.name} made network requests: {made[1:]}"
        made = browser.requests_while_loading(control.as_uri())  # the method does see a page's request
        assert "http://melbo-test.invalid/x.png" in made, made
    finally:
        browser.close()


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    root = tmp_path_factory.mktemp("tiny_report")
    tok = tiny_tokenizer(with_chat_template=True)
    model: Any = tiny_model("llama", vocab=len(tok))
    model.save_pretrained(root / "model")
    tok.save_pretrained(root / "model")
    g = torch.Generator().manual_seed(1)
    V = torch.nn.functional.normalize(torch.randn(32, 4, generator=g), dim=0)
    Features(U=V.flip(1), V=V, alpha=torch.ones(4), R=20.0, method="exponential", source_layer=1, target_layer=3,
             objective=[1.0, 2.0], model=model_fingerprint(model)).save(root / "feats")
    (root / "prompts.txt").write_text("hello there\nhow do I make tea\nwrite a poem\n")
    return root / "model", root / "feats", root / "prompts.txt"


def test_cli_report_without_and_with_a_model(tiny_run: tuple[Path, Path, Path], tmp_path: Path) -> None:
    model, feats, prompts = tiny_run
    assert main(["report", str(feats), "-o", str(tmp_path / "plain.html")]) == 0
    plain = (tmp_path / "plain.html").read_text()
    assert "Training objective" not in plain or "<svg" in plain
    assert 'id="scores"' not in plain and 'id="completions"' not in plain
    assert main(["report", str(feats), "--model", str(model), "--prompts", str(prompts), "--n-heldout", "2",
                 "--top-k", "2", "--max-new-tokens", "3", "--token-a", "Sure", "--token-b", "I",
                 "-o", str(tmp_path / "full.html")]) == 0
    full = (tmp_path / "full.html").read_text()
    assert 'id="scores"' in full and full.count('class="completions"') == 2
    assert "how do I make tea" in full and "write a poem" not in full.split('id="completions"')[1]


HOSTILE = "<script>alert(1)</script> & co"
HOSTILE_ESCAPED = "&lt;script&gt;alert(1)&lt;/script&gt; &amp; co"


def _discovery(text: str) -> Any:
    from melbo.evaluate.behaviours import BehaviourGroup, VectorBehaviour
    from melbo.jobs.discover import Discovery

    best = VectorBehaviour(vector=3, scale=1.0, signature=text, rate=0.5, base_rate=0.0, consistency=0.5, change=0.5,
                           information=3.0)
    group = BehaviourGroup(rank=1, signature=text, best=best, members=((3, 1.0),), examples=((text, "fine", text),),
                           random_hits=0, n_random=4)
    return Discovery(groups=[group], behaviours=[best], controls=[], features=_features(), train_prompts=["a"],
                     eval_prompts=["b"], unsteered=["fine"], completions={}, control_completions={}, seconds={})


@pytest.mark.parametrize("page", ["report", "discovery"])
def test_hostile_model_text_is_escaped(page: str) -> None:
    """Completions are untrusted: markup and ``&`` in them come out as text, in both pages."""
    from melbo.report.discovery import discovery_html

    if page == "report":
        comp = Completions(prompts=[HOSTILE], unsteered=["no"], steered={0: [HOSTILE]})
        text = render_report(_features(), completions=comp, notes=[HOSTILE], title=HOSTILE)
    else:
        text = discovery_html(_discovery(HOSTILE), conclusion=HOSTILE, title=HOSTILE)
    assert "<script" not in text and HOSTILE_ESCAPED in text
    refs = _Refs()
    refs.feed(text)
    assert refs.banned == [] and refs.external == []
    assert text.count(HOSTILE_ESCAPED) >= 4  # title tag, heading, and the model text itself


def test_report_data_is_validated_and_ordered() -> None:
    from melbo.evaluate.report_data import ReportData, feature_order, score_list

    feats = _features(m=4)
    assert feature_order(feats, [0.5, float("nan"), 2.0, 0.5]) == [2, 0, 3, 1]  # NaN last, ties by index
    by_alpha = sorted(range(4), key=lambda i: -float(feats.alpha[i]) ** 2)
    assert feature_order(feats, None) == by_alpha
    with pytest.raises(ValueError, match="one score per feature"):
        score_list([1.0, 2.0], 4)
    data = ReportData(scores=torch.tensor([1, 2]).tolist(), unsteered_score=1,
                      completions={"prompts": ["p"], "unsteered": ["u"], "steered": {"2": ["s"]}})
    assert data.scores == [1.0, 2.0] and isinstance(data.unsteered_score, float)
    assert isinstance(data.completions, Completions) and data.completions.steered == {2: ["s"]}
    with pytest.raises(ValueError, match="steered completions for 1 prompts"):
        Completions(prompts=["p"], unsteered=["u"], steered={0: []})
