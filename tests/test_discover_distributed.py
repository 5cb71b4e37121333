"""``discover`` on 2 gloo processes gives the one-process run: the same features (to float
rounding), completions, behaviour groups and files; only rank 0 writes, resume and --force
work as in one process."""

from __future__ import annotations

import datetime
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from tiny_models import tiny_model

from melbo.features import Features
from melbo.jobs.discover import DiscoverConfig, Discovery, discover
from melbo.jobs.distributed import from_rank0, split_columns
from melbo.jobs.train import CHECKPOINT, TrainConfig, train
from melbo.testing import tiny_tokenizer

pytestmark = pytest.mark.filterwarnings("ignore::melbo.fit.ConvergenceWarning")  # 2-4 iterations, on purpose

WORLD = 2
TIMEOUT_S = 90
PROMPTS = [f"Tell me about {s}." for s in ("rivers", "owls", "bread", "clocks", "maps", "tea")]
# 5 features + 2 random vectors a scale: 4 + 3 vectors on the two ranks; R calibrated (sharded too)
CFG: dict[str, Any] = {"source_layer": 1, "target_layer": 3, "n_factors": 5, "max_iter": 2, "n_train": 3, "n_eval": 3,
                       "scales": (1.0, 3.0), "max_new_tokens": 4, "n_random": 2, "chat": True}
# The sharded fit computes each column's Δ and VJPs in a smaller batch than one process does, so
# the factors agree to float32 rounding, not bit for bit (as in tests/test_distributed.py).
ATOL = 1e-5
TRAIN = {"source_layer": 1, "target_layer": 3, "n_factors": 5, "max_iter": 4, "chat": True}


class _Stop(Exception):
    pass


def _stop_at_2(it: int, objective: float) -> None:
    if it == 2:
        raise _Stop


def _model() -> tuple[torch.nn.Module, Any]:
    tok = tiny_tokenizer(with_chat_template=True)
    return tiny_model("llama", vocab=len(tok)), tok


def _summary(res: Discovery) -> dict[str, Any]:
    return {"U": res.features.U.clone(), "V": res.features.V.clone(), "R": res.features.R,
            "completions": res.completions, "controls": res.control_completions, "unsteered": res.unsteered,
            "json": res.to_json()}


def _worker(rank: int, init_file: str, tmp: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD,
                            timeout=datetime.timedelta(seconds=TIMEOUT_S))
    try:
        model, tok = _model()
        # rank 1 is given a directory of its own: it must never be made (rank 0 alone writes)
        out = Path(tmp) / ("run" if rank == 0 else "ghost")
        rec: dict[str, Any] = {}
        said: list[str] = []
        rec["first"] = _summary(discover(model, tok, PROMPTS, DiscoverConfig(**CFG), out, say=said.append))
        try:  # an earlier run's OUT without --force/--resume: refused on rank 0, raised on every rank
            discover(model, tok, PROMPTS, DiscoverConfig(**CFG), out)
        except FileExistsError as err:
            rec["refused"] = str(err)
        resumed: list[str] = []
        rec["resumed"] = _summary(discover(model, tok, PROMPTS, DiscoverConfig(**CFG), out, resume=True,
                                           say=resumed.append))
        forced: list[str] = []
        rec["forced"] = _summary(discover(model, tok, PROMPTS, DiscoverConfig(**CFG), out, force=True,
                                          say=forced.append))
        rec["said"], rec["said_resumed"], rec["said_forced"] = said, resumed, forced
        # a sharded fit stopped after iteration 2 (every rank: the callback runs on each) resumes
        # from the checkpoint rank 0 wrote and read, to the uninterrupted one-process fit
        fit_out = Path(tmp) / ("fit" if rank == 0 else "ghost")
        try:
            train(model, tok, PROMPTS[:3], TrainConfig(**TRAIN), fit_out, on_iteration=_stop_at_2, distributed=True)
        except _Stop:
            rec["checkpoint"] = (Path(tmp) / "fit" / CHECKPOINT / "state.json").is_file()
        fit = train(model, tok, PROMPTS[:3], TrainConfig(**TRAIN), fit_out, resume=True, distributed=True)
        rec["fit"] = {"U": fit.U, "V": fit.V, "n_iter": fit.extra["n_iter"], "resumed_at": fit.extra.get("resumed_at")}
        torch.save(rec, Path(tmp) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _without_seconds(obj: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in obj.items() if k != "seconds"}


def test_helpers_without_a_process_group_run_alone() -> None:
    V = torch.arange(6.0).reshape(2, 3)
    assert split_columns(lambda cols: [float(c.sum()) for c in cols.T], V) == [3.0, 5.0, 7.0]
    assert from_rank0(lambda: "x") == "x"
    with pytest.raises(KeyError):
        from_rank0(lambda: {}["missing"])


def test_two_gloo_ranks_discover_what_one_process_does(tmp_path: Path) -> None:
    ctx = mp.start_processes(_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=WORLD, join=False,
                             start_method="spawn")
    deadline = time.monotonic() + 2 * TIMEOUT_S
    try:
        while not ctx.join(timeout=1):
            if time.monotonic() > deadline:
                pytest.fail(f"distributed discover did not finish in {2 * TIMEOUT_S} s")
    finally:
        for p in ctx.processes:
            if p.is_alive():
                p.terminate()
    torch.set_num_threads(1)
    model, tok = _model()
    one = tmp_path / "one"
    ref = _summary(discover(model, tok, PROMPTS, DiscoverConfig(**CFG), one))
    assert not (tmp_path / "ghost").exists(), "rank 1 wrote into its --out"
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]
    for rank, rec in enumerate(ranks):
        for run in ("first", "resumed", "forced"):
            got = rec[run]
            for key in ("U", "V"):
                assert torch.allclose(got[key], ref[key], rtol=0, atol=ATOL), (rank, run, key)
            assert got["R"] == pytest.approx(ref["R"], rel=1e-6, abs=0)
            # greedy completions of every (vector, scale) and the groups ranked from them: exactly the same
            assert got["completions"] == ref["completions"] and len(got["completions"]) == 5 * 2, (rank, run)
            assert got["controls"] == ref["controls"] and got["unsteered"] == ref["unsteered"], (rank, run)
            assert got["json"]["groups"] == ref["json"]["groups"], (rank, run)
            assert _without_seconds(got["json"]) == _without_seconds(ref["json"]), (rank, run)
        assert "--resume" in rec["refused"], rank
        # every rank returns the same Discovery (timings included: rank 0's)
        assert rec["first"]["json"] == ranks[0]["first"]["json"]
    # the interrupted sharded fit resumed to the uninterrupted one-process fit
    full = train(model, tok, PROMPTS[:3], TrainConfig(**TRAIN))
    for rec in ranks:
        assert rec["checkpoint"] and (rec["fit"]["n_iter"], rec["fit"]["resumed_at"]) == (4, 2)
        for key in ("U", "V"):
            assert torch.allclose(rec["fit"][key], getattr(full, key), rtol=0, atol=ATOL), key
    assert Features.load(tmp_path / "fit").extra["n_iter"] == 4 and not (tmp_path / "fit" / CHECKPOINT).exists()
    # only rank 0 talks; resume reused the features and every generation, --force fitted again
    said0, said1 = ranks[0], ranks[1]
    assert said0["said"] and not said1["said"] and not said1["said_resumed"] and not said1["said_forced"]
    assert any("reusing" in c and "features" in c for c in said0["said_resumed"])
    assert any("cached" in c for c in said0["said_resumed"])
    assert not any(c.startswith(("generating", "fitting")) for c in said0["said_resumed"])
    assert any(c.startswith("fitting") for c in said0["said_forced"])
    # the files: those of the one-process run (features to rounding; the rest exactly, timings aside)
    run = tmp_path / "run"
    assert sorted(p.name for p in run.iterdir()) == sorted(p.name for p in one.iterdir())
    got_f, ref_f = Features.load(run / "features"), Features.load(one / "features")
    assert torch.allclose(got_f.V, ref_f.V, rtol=0, atol=ATOL) and torch.allclose(got_f.U, ref_f.U, rtol=0, atol=ATOL)
    got_b, ref_b = (json.loads((d / "behaviours.json").read_text()) for d in (run, one))
    assert _without_seconds(got_b) == _without_seconds(ref_b)
    got_c, ref_c = (json.loads((d / "completions.json").read_text()) for d in (run, one))
    assert {k: v for k, v in got_c.items() if k != "key"} == {k: v for k, v in ref_c.items() if k != "key"}


def test_melbo_discover_under_torchrun_writes_the_one_process_run(tmp_path: Path) -> None:
    # the command line joins torchrun's process group itself (gloo with --device cpu); rank 0 alone
    # prints and writes, and the files are those of `melbo discover` in one process
    from melbo.cli import main

    tok = tiny_tokenizer(with_chat_template=True)
    mdir = tmp_path / "tiny"
    tiny_model("llama", vocab=len(tok)).save_pretrained(mdir)
    tok.save_pretrained(mdir)
    prompts = tmp_path / "p.txt"
    prompts.write_text("\n".join(PROMPTS))
    args = ["discover", str(mdir), "--prompts", str(prompts), "--n-train", "3", "--n-eval", "3", "--factors", "3",
            "--iters", "1", "--random", "2", "--max-new-tokens", "3", "--source-layer", "1", "--target-layer", "3",
            "--no-progress", "--device", "cpu"]
    torchrun = Path(sys.executable).with_name("torchrun")
    if not torchrun.is_file():
        pytest.skip("torchrun is not installed beside this Python")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.run([str(torchrun), "--standalone", "--nproc-per-node", str(WORLD), "-m", "melbo", *args,
                           "--out", str(tmp_path / "run")], env=env, capture_output=True, text=True,
                          timeout=2 * TIMEOUT_S, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("behaviour(s) found") == 1, proc.stdout
    torch.set_num_threads(1)
    assert main([*args, "--out", str(tmp_path / "one")]) == 0
    run, one = tmp_path / "run", tmp_path / "one"
    assert sorted(p.name for p in run.iterdir()) == sorted(p.name for p in one.iterdir())
    got_b, ref_b = (json.loads((d / "behaviours.json").read_text()) for d in (run, one))
    assert _without_seconds(got_b) == _without_seconds(ref_b)
    # a --device other than the rank's own is refused before anything loads, on every rank
    bad = subprocess.run([str(torchrun), "--standalone", "--nproc-per-node", str(WORLD), "-m", "melbo", *args[:-2],
                          "--device", "cuda:1", "--out", str(tmp_path / "bad")], env=env, capture_output=True,
                         text=True, timeout=TIMEOUT_S, check=False)
    assert bad.returncode != 0 and "--device cuda:1: under torchrun" in bad.stderr
    assert not (tmp_path / "bad").exists()
