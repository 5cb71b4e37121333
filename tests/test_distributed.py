"""Sharding the factors over 2 gloo processes gives the single-process fit."""

from __future__ import annotations

import datetime
import time
import warnings
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from tiny_models import tiny_model

from melbo.fit import ConvergenceWarning, ExponentialDCT
from melbo.fit.calibrate import calibrate_R
from melbo.fit.exponential import exponential_dct
from melbo.jobs.distributed import (
    ShardedCausalMap,
    distributed_exponential_dct,
    distributed_fit,
    shard_bounds,
)
from melbo.maps.transformer import TransformerCausalMap
from melbo.prompts import PromptBatch, resolve_positions

WORLD = 2
TIMEOUT_S = 50


def _map() -> TransformerCausalMap:
    model = tiny_model("qwen2", seed=0, attn="sdpa")
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 96, (2, 6), generator=g)
    batch = PromptBatch(ids, torch.ones_like(ids), resolve_positions(3, [6, 6], [0, 0]), ("a", "b"), "none")
    return TransformerCausalMap(model, batch, 1, 3)


def _fits(cmap: object, fit: object, m: int) -> tuple[torch.Tensor, ...]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        res = fit(cmap, m, R=1.5, max_iter=3, random_state=0, d_proj=4)  # type: ignore[operator]
    return res.U, res.V, res.alpha, torch.tensor(res.history)


def _options_fit(cmap: object, sharded: bool) -> torch.Tensor:
    """Every OGI option the old sharded copy lacked, R calibrated: through the estimator."""
    est = ExponentialDCT(5, max_iter=2, random_state=0, d_proj=4, n_cal=3, sequential=True, orient=True, ortho="polar")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est = distributed_fit(est, cmap) if sharded else est.fit(cmap)  # type: ignore[arg-type]
    return torch.cat([est.U_, est.V_, est.alpha_[None], torch.tensor([[est.R_] * 5])])


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD,
        timeout=datetime.timedelta(seconds=TIMEOUT_S),
    )
    try:
        cmap = _map()
        out: dict[str, torch.Tensor] = {}
        for m in (5, 1):  # uneven split (3 + 2 columns), and a rank with no columns
            for key, t in zip("UVAO", _fits(cmap, distributed_exponential_dct, m)):
                out[f"{key}{m}"] = t
        out["R"] = torch.tensor(calibrate_R(ShardedCausalMap(cmap), 0.5, n_cal=3, random_state=0).R)
        out["options"] = _options_fit(cmap, sharded=True)
        torch.save(out, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_shard_bounds_cover_the_columns_once() -> None:
    for m in range(0, 9):
        cols = [c for r in range(3) for c in range(*shard_bounds(m, 3, r)[:2])]
        assert cols == list(range(m))


def test_sharded_map_without_process_group_is_the_map() -> None:
    cmap = _map()
    for a, b in zip(_fits(ShardedCausalMap(cmap), exponential_dct, 4), _fits(cmap, exponential_dct, 4)):
        assert torch.equal(a, b)


def test_two_gloo_ranks_give_the_single_process_factors(tmp_path: Path) -> None:
    ctx = mp.start_processes(
        _worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=WORLD, join=False, start_method="spawn"
    )
    deadline = time.monotonic() + TIMEOUT_S
    try:
        while not ctx.join(timeout=1):
            if time.monotonic() > deadline:
                pytest.fail(f"distributed fit did not finish in {TIMEOUT_S} s")
    finally:
        for p in ctx.processes:
            if p.is_alive():
                p.terminate()
    cmap = _map()
    ref: dict[str, torch.Tensor] = {}
    for m in (5, 1):
        for key, t in zip("UVAO", _fits(cmap, exponential_dct, m)):
            ref[f"{key}{m}"] = t
    ref["R"] = torch.tensor(calibrate_R(cmap, 0.5, n_cal=3, random_state=0).R)
    ref["options"] = _options_fit(cmap, sharded=False)
    for rank in range(WORLD):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        for key, want in ref.items():
            assert torch.allclose(got[key], want, rtol=1e-5, atol=1e-5), (rank, key, got[key], want)
