"""``melbo explore`` without a browser: reading a run, notes, exports, the generation worker
(streamed, cached, steered and ablated as melbo's own interventions do), the token gate and
the command line. The browser side is tests/test_explore_browser.py."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import torch
from explore_fixtures import MAX_NEW_TOKENS, N_FEATURES, PROMPTS, XSS, make_model, make_run

from melbo.explore.engine import Engine, GenRequest
from melbo.explore.export import export_subset
from melbo.explore.notes import NOTES_FILE, Notes
from melbo.explore.run import features_dir_of, load_run
from melbo.features import Features
from melbo.generation import generate, generate_steered
from melbo.steering.interventions import ablate, steer


@pytest.fixture(scope="module")
def model_tok() -> tuple[Any, Any]:
    return make_model()


@pytest.fixture()
def run_dir(tmp_path: Path, model_tok: tuple[Any, Any]) -> Path:
    return make_run(tmp_path / "run", model_tok[0])


def _collect(engine: Engine, req: GenRequest) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    done = threading.Event()

    def listener(ev: dict[str, Any]) -> None:
        events.append(ev)
        if ev["type"] in ("done", "error"):
            done.set()

    engine.submit(req, listener)
    assert done.wait(60), "the worker did not finish"
    return events


# ------------------------------------------------------------------ the run


def test_a_discover_run_gives_its_scores_prompts_and_completions(run_dir: Path) -> None:
    run = load_run(run_dir, n_prompts=2)
    assert run.features_dir == run_dir / "features" and run.prompts == PROMPTS[:2]
    rows = run.rows()
    assert len(rows) == N_FEATURES
    assert [round(r["alpha2"], 4) for r in rows] == [0.25, 4.0, 1.0, 9.0, 0.0625, 2.25]
    assert rows[2]["behaviour"] == pytest.approx(0.9) and rows[2]["best_scale"] == 2.0 and rows[2]["group"] == 1
    assert rows[1]["signature"] == XSS and rows[4]["behaviour"] is None
    assert run.discover_curves[2] == [(1.0, pytest.approx(0.45)), (2.0, pytest.approx(0.9))]
    assert run.seen[(1, 1.0, PROMPTS[0], MAX_NEW_TOKENS, "True")] == XSS
    assert run.seen[(None, 0.0, PROMPTS[1], MAX_NEW_TOKENS, "True")] == "plain b"
    assert load_run(run_dir, prompts=["mine"]).prompts == ["mine"]


def test_a_features_directory_alone_is_explorable_and_a_wrong_one_is_named(tmp_path: Path, run_dir: Path) -> None:
    run = load_run(run_dir / "features")
    assert [c.key for c in run.columns] == ["alpha2"] and "built-in" in run.prompt_source and len(run.prompts) == 4
    (run_dir / "features" / "analysis.json").write_text(json.dumps({"feature_scores": [1.0] * N_FEATURES,
                                                                    "config": {"token_a": "Sure"}}))
    assert load_run(run_dir / "features").rows()[0]["analysis"] == 1.0
    with pytest.raises(FileNotFoundError, match="holds no features"):
        features_dir_of(tmp_path)
    with pytest.raises(ValueError, match="n_prompts"):
        load_run(run_dir, n_prompts=0)


# ------------------------------------------------------------------ notes and exports


def test_notes_are_one_file_written_whole_and_a_foreign_file_is_never_overwritten(tmp_path: Path) -> None:
    notes = Notes(tmp_path, 4)
    notes.set(2, label="  pirate  ", note="arr")
    notes.set(0, label="x", note="")
    notes.set(0, label="", note=" ")  # empty: forgotten
    assert json.loads((tmp_path / NOTES_FILE).read_text())["features"] == {"2": {"label": "pirate", "note": "arr"}}
    assert Notes(tmp_path, 4).get(2) == {"label": "pirate", "note": "arr"}
    assert [p.name for p in tmp_path.iterdir()] == [NOTES_FILE]  # no temporary file left
    with pytest.raises(ValueError, match="out of range"):
        notes.set(4, label="a", note="")
    with pytest.raises(ValueError, match="at most"):
        notes.set(1, label="a" * 201, note="")
    (tmp_path / NOTES_FILE).write_text("{not json")
    with pytest.raises(ValueError, match="never overwritten"):
        Notes(tmp_path, 4)
    assert (tmp_path / NOTES_FILE).read_text() == "{not json"


def test_an_export_is_a_new_directory_holding_the_chosen_columns(run_dir: Path) -> None:
    feats = Features.load(run_dir / "features")
    a = export_subset(feats, [4, 1], run_dir, labels={1: "one"}, source="here")
    b = export_subset(feats, [0], run_dir)
    assert a.name == "subset-001" and b.name == "subset-002"
    sub = Features.load(a)
    assert sub.V.equal(feats.V[:, [4, 1]]) and sub.U is not None and sub.U.equal(feats.U[:, [4, 1]])  # type: ignore[index]
    assert sub.extra["explore_export"] == {"source": "here", "indices": [4, 1], "labels": {"1": "one"}}
    for bad in ([], [N_FEATURES], [1, 1], ["0"], None):
        with pytest.raises(ValueError):
            export_subset(feats, bad, run_dir)  # type: ignore[arg-type]
    assert sorted(p.name for p in (run_dir / "explore-exports").iterdir()) == ["subset-001", "subset-002"]


# ------------------------------------------------------------------ the worker


def test_streamed_text_grows_to_the_completion_generate_steered_returns(model_tok: tuple[Any, Any]) -> None:
    model, tok = model_tok
    V = torch.nn.functional.normalize(torch.randn(32, 2, generator=torch.Generator().manual_seed(1)), dim=0) * 8
    seen: dict[tuple[int, int], list[str]] = {}
    out = generate_steered(model, tok, PROMPTS, V, layer=1, max_new_tokens=6, chat=True,
                           on_text=lambda j, i, t: seen.setdefault((j, i), []).append(t))
    assert out == generate_steered(model, tok, PROMPTS, V, layer=1, max_new_tokens=6, chat=True)
    for (j, i), texts in seen.items():
        assert texts[-1] == out[j][i] and all(texts[n + 1].startswith(texts[n]) for n in range(len(texts) - 1))
    assert sorted(seen) == [(j, i) for j in range(2) for i in range(3)]


def test_the_worker_steers_and_ablates_as_melbos_interventions_do_and_caches(run_dir: Path,
                                                                             model_tok: tuple[Any, Any]) -> None:
    model, tok = model_tok
    run = load_run(run_dir)
    feats = run.features
    engine = Engine(model, tok, feats, chat=True)
    try:
        k, scale = 3, -1.5
        ev = _collect(engine, GenRequest(feature=k, scale=scale, prompts=tuple(PROMPTS), max_new_tokens=5))
        done = ev[-1]
        assert [e["type"] for e in ev[:2]] == ["queued", "start"] and done["type"] == "done" and done["generated"]
        # ground truth: melbo's own steering hook around melbo.generate, one vector for the whole batch
        with steer(model, feats.V[:, k] * feats.R, layer=feats.source_layer, scale=scale):
            assert done["steered"] == generate(model, tok, PROMPTS, max_new_tokens=5, chat=True)
        assert done["unsteered"] == generate(model, tok, PROMPTS, max_new_tokens=5, chat=True)
        assert done["steered"] != done["unsteered"]  # the steering shows
        texts = [e for e in ev if e["type"] == "text" and e["side"] == "steered" and e["prompt"] == 0]
        assert len(texts) >= 2 and texts[-1]["text"] == done["steered"][0]
        # a second identical request is served from the cache
        again = _collect(engine, GenRequest(feature=k, scale=scale, prompts=tuple(PROMPTS), max_new_tokens=5))[-1]
        assert not again["generated"] and again["steered"] == done["steered"]
        # ablating v and u while steering: melbo.steering.interventions.ablate around the same steering
        abl = _collect(engine, GenRequest(feature=k, scale=scale, prompts=tuple(PROMPTS), max_new_tokens=5,
                                          ablate_v=True, ablate_u=True))[-1]
        assert feats.U is not None
        with ablate(model, torch.stack([feats.V[:, k], feats.U[:, k]], 1)), \
                steer(model, feats.V[:, k] * feats.R, layer=feats.source_layer, scale=scale):
            assert abl["steered"] == generate(model, tok, PROMPTS, max_new_tokens=5, chat=True)
        assert abl["unsteered"] == done["unsteered"]
        # scale 0 without ablation is the unsteered model
        zero = _collect(engine, GenRequest(feature=k, scale=0.0, prompts=tuple(PROMPTS), max_new_tokens=5))[-1]
        assert zero["steered"] == zero["unsteered"] == done["unsteered"] and not zero["generated"]
        curve = engine.curve(k, PROMPTS, 5)
        assert [p["scale"] for p in curve] == [-1.5, 0.0] and curve[1]["score"] == 0.0
    finally:
        engine.close()


def test_bad_requests_are_refused_before_they_are_queued(run_dir: Path, model_tok: tuple[Any, Any]) -> None:
    run = load_run(run_dir)
    engine = Engine(*model_tok, run.features)
    try:
        for req, match in [
            (GenRequest(feature=N_FEATURES, scale=1.0, prompts=("a",)), "out of range"),
            (GenRequest(feature=0, scale=float("nan"), prompts=("a",)), "finite"),
            (GenRequest(feature=0, scale=1.0, prompts=("a",), max_new_tokens=0), "max_new_tokens"),
            (GenRequest(feature=0, scale=1.0, prompts=()), "prompts"),
            (GenRequest(feature=None, scale=1.0, prompts=("a",), ablate_v=True), "needs a feature"),
        ]:
            with pytest.raises(ValueError, match=match):
                engine.submit(req, lambda ev: None)
        assert engine.status()["queued"] == 0
    finally:
        engine.close()


def test_a_request_nobody_listens_to_is_dropped(run_dir: Path, model_tok: tuple[Any, Any]) -> None:
    run = load_run(run_dir)
    engine = Engine(*model_tok, run.features)
    try:
        gate = threading.Event()
        engine.submit(GenRequest(feature=0, scale=2.0, prompts=("x",), max_new_tokens=4),
                              lambda ev: gate.wait(10) if ev["type"] == "start" else None)
        events: list[dict[str, Any]] = []
        second = engine.submit(GenRequest(feature=1, scale=2.0, prompts=("x",), max_new_tokens=4), events.append)
        second.cancel()
        gate.set()
        last = _collect(engine, GenRequest(feature=2, scale=2.0, prompts=("x",), max_new_tokens=4))
        assert last[-1]["type"] == "done"
        assert [e["type"] for e in events] == ["queued"]  # never started
    finally:
        engine.close()


# ------------------------------------------------------------------ HTTP and CLI


def test_the_app_needs_the_token_on_every_path_and_sets_a_cookie(run_dir: Path, model_tok: tuple[Any, Any]) -> None:
    pytest.importorskip("starlette", reason="the explore extra is not installed")
    pytest.importorskip("uvicorn", reason="the explore extra is not installed")
    from melbo.explore.app import SECURITY_HEADERS
    from melbo.explore.explorer import Explorer
    from melbo.explore.server import BackgroundServer

    with BackgroundServer(Explorer(load_run(run_dir), *model_tok)) as srv:
        def get(path: str, **headers: str) -> tuple[int, Any]:
            req = urllib.request.Request(srv.base + path, headers=headers)
            try:
                with urllib.request.urlopen(req) as r:
                    return int(r.status), r.headers
            except urllib.error.HTTPError as err:
                return int(err.code), err.headers

        for path in ("/", "/feature/1", "/static/app.js", "/api/run", "/api/search?q=a", "/nope", "/../etc/passwd"):
            assert get(path)[0] == 403, path
        code, headers = get("/?token=" + srv.token)
        assert code == 200 and srv.token in headers["set-cookie"] and "HttpOnly" in headers["set-cookie"]
        assert headers["content-security-policy"] == SECURITY_HEADERS["content-security-policy"]
        assert get("/api/run", Cookie=f"melbo_explore_{srv.port}={srv.token}")[0] == 200
        assert get("/api/run", Cookie=f"melbo_explore_{srv.port}={srv.token}x")[0] == 403
        assert get("/static/other.js", **{"X-Melbo-Token": srv.token})[0] == 404
        req = urllib.request.Request(srv.base + "/api/generate?feature=0&scale=1&heldout=0&prompt=hi&max_new_tokens=3",
                                     headers={"X-Melbo-Token": srv.token})
        with urllib.request.urlopen(req) as r:
            assert r.headers["content-type"].startswith("text/event-stream")
            events = [json.loads(line[5:]) for line in r if line.startswith(b"data:")]
        assert events[-1]["type"] == "done" and len(events[-1]["steered"]) == 1
        assert get("/api/generate?feature=99&scale=1", **{"X-Melbo-Token": srv.token})[0] == 400


def test_the_cli_lists_explore_and_names_a_missing_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from melbo.cli import build_parser, main

    assert "explore" in build_parser().format_help()
    with pytest.raises(SystemExit) as err:
        main(["explore", str(tmp_path / "nowhere")])
    assert err.value.code == 2 and "does not exist" in capsys.readouterr().err


def test_the_cli_says_how_to_install_the_extra_when_it_is_missing(run_dir: Path, monkeypatch: pytest.MonkeyPatch,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    import builtins

    from melbo.cli import main

    real = builtins.__import__

    def fake(name: str, *args: Any, **kw: Any) -> Any:
        if name in ("starlette", "uvicorn"):
            raise ImportError(f"No module named {name!r}", name=name)
        return real(name, *args, **kw)

    monkeypatch.setattr(builtins, "__import__", fake)
    assert main(["explore", str(run_dir)]) == 2
    assert "pip install 'melbo[explore]'" in capsys.readouterr().err


def test_a_host_other_than_loopback_is_recognised() -> None:
    from melbo.explore.server import is_loopback, open_socket

    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.4")
    with pytest.raises(ValueError, match="port"):
        open_socket("127.0.0.1", 70000)
