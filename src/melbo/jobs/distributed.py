"""Fits sharded over factors with ``torch.distributed`` (one process per GPU).

Design
------
:class:`ShardedCausalMap` wraps a rank's :class:`~melbo.maps.protocol.CausalMap` and splits
every batched primitive by columns: with k ranks and m factors, rank r computes the
columns ``[r·b, min(m, (r+1)·b))``, b = ⌈m/k⌉, of Δ, its VJPs (and J(0)v, T⁽²⁾…) on its
own device, and an ``all_gather`` returns the full (d, m) result to every rank (a rank
with fewer or no columns pads its block with zeros, dropped after the gather). Since
column ℓ of every primitive depends only on column ℓ of its inputs, the result equals the
single-process one up to float rounding.

Everything outside the primitives is replicated: every rank holds the full (d, m) U and
V (a few MiB) and runs the unchanged single-process fit (:func:`distributed_fit` calls the
estimator's own ``fit``, so every OGI option — ``sequential``, ``orient``, ``ortho``, … —
works sharded) on the wrapped map — the QR of V is computed by every rank on the same gathered matrix, the
objective Σ_ℓ⟨u_ℓ, G_U[:, ℓ]⟩ from the same gathered G_U (so it needs no separate
all-reduce), and the init draws come from the same seed. Ranks therefore run the same
deterministic computation on bit-identical inputs and stay in step without broadcasts.
Per iteration the communication is one all-gather of (2d, m) values (G_U and G_V
together); the forward and backward of the slice — all the FLOPs — are split k ways.
:func:`melbo.fit.calibrate_R` and :func:`melbo.fit.init.initial_factors` shard the same
way when given the wrapped map.

Launching on a multi-GPU box
----------------------------
One process per GPU, started by ``torchrun``, each loading the whole model on its GPU::

    torchrun --standalone --nproc-per-node 8 fit_sharded.py

    # fit_sharded.py
    import torch.distributed as dist
    from melbo.maps.transformer import TransformerCausalMap
    from melbo.jobs.distributed import distributed_fit, init_distributed
    from melbo.fit import ExponentialDCT
    from melbo.models.loading import load_model

    rank, world_size, device = init_distributed()          # NCCL on GPUs, gloo on CPUs
    model, tok = load_model("Qwen/Qwen1.5-7B-Chat", dtype="bfloat16", device=device)
    cmap = TransformerCausalMap(model, prompts, 10, 20, tokenizer=tok)
    est = distributed_fit(ExponentialDCT(512, random_state=0, orient=True), cmap)  # R calibrated, sharded
    if rank == 0:
        est.to_features().save("features")  # identical on every rank
    dist.destroy_process_group()

Models larger than one GPU (``device_map="auto"``)
--------------------------------------------------
A model dispatched by accelerate (``from_pretrained(..., device_map="auto")``) carries a
hook on every decoder layer that moves the layer's inputs (the residual stream and every
keyword argument: masks, rotary cos/sin) to that layer's device before it runs, so
:class:`melbo.models.slice.LayerSlice`, which calls the layer modules themselves, walks the
residual across the GPUs without change, and :class:`melbo.maps.transformer.TransformerCausalMap`
reads the target rows on the device of layer t−1 and moves only those (n·k rows of d) back to
the first device, where θ, U and V live. Sharding composes with model parallelism: give each rank
its own group of GPUs (e.g. 8 GPUs, 2 ranks × 4: launch 2 processes and load with
``device_map="auto", max_memory={g: "75GiB" for g in my_gpus}``), and set the process
group's device to the rank's first GPU, where the gathered results live.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
import os
import pickle
from collections.abc import Callable
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import Tensor

from melbo.fit._common import RandomState, check_delta, make_generator
from melbo.fit.estimator import FitEstimator
from melbo.fit.exponential import exponential_dct
from melbo.fit.result import FitResult
from melbo.maps.protocol import CausalMap

__all__ = ["ShardedCausalMap", "distributed_exponential_dct", "distributed_fit", "from_rank0", "init_distributed",
           "process_world", "shard_bounds", "split_columns"]

logger = logging.getLogger(__name__)

_E = TypeVar("_E", bound=FitEstimator)
_T = TypeVar("_T")


def shard_bounds(m: int, world_size: int, rank: int) -> tuple[int, int, int]:
    """Columns ``[start, stop)`` that ``rank`` owns of m, and the block size b = ⌈m/k⌉."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need world_size >= 1 and 0 <= rank < world_size, got {world_size}, {rank}")
    block = -(-m // world_size)
    start = min(m, rank * block)
    return start, min(m, start + block), block


def _world(group: dist.ProcessGroup | None) -> tuple[int, int]:
    if not (dist.is_available() and dist.is_initialized()):
        return 1, 0
    return dist.get_world_size(group), dist.get_rank(group)


def process_world(group: dist.ProcessGroup | None = None) -> tuple[int, int]:
    """(world size, rank) of ``group`` (default: the world); (1, 0) without a process group."""
    return _world(group)


def _src(group: dist.ProcessGroup | None) -> int:
    return dist.get_global_rank(group, 0) if group is not None else 0


def from_rank0(fn: Callable[[], _T], group: dist.ProcessGroup | None = None) -> _T:
    """``fn()`` run on rank 0 alone, its value — or the exception it raised — broadcast to every
    rank (``broadcast_object_list``: any picklable value), so that every rank returns it or raises
    it. The file system work of a sharded job goes through here: one rank reads and writes (the
    other ranks need no shared disk), and an error there (a refused ``--out``, a full disk) stops
    every rank at once instead of leaving them waiting in the next collective. Every rank must
    call it at the same point. Without a process group: ``fn()``."""
    world, rank = _world(group)
    if world == 1:
        return fn()
    box: list[Any] = [None]
    if rank == 0:
        try:
            box[0] = (True, fn())
        except Exception as err:  # noqa: BLE001 — sent to every rank and raised there, here too
            try:
                pickle.dumps(err)
                box[0] = (False, err)
            except Exception:  # noqa: BLE001 — an exception that does not pickle: its text
                box[0] = (False, RuntimeError(f"rank 0: {type(err).__name__}: {err}"))
    dist.broadcast_object_list(box, src=_src(group), group=group)
    ok, value = box[0]
    if not ok:
        raise value
    return value  # type: ignore[no-any-return]


def split_columns(fn: Callable[[Tensor], list[_T]], V: Tensor, group: dist.ProcessGroup | None = None) -> list[_T]:
    """``fn(V)`` — one result per column of the (d, k) ``V`` — with the columns split over the
    ranks of ``group``: rank r runs ``fn`` on its contiguous block (:func:`shard_bounds`; a rank
    with no columns runs nothing) and every rank gets all k results, in column order
    (``all_gather_object``). Sharded steered generation uses it: a (vector, prompt) completion
    depends only on its vector. Without a process group: ``fn(V)``."""
    world, rank = _world(group)
    if world == 1:
        return fn(V)
    k = int(V.shape[1])
    start, stop, _ = shard_bounds(k, world, rank)
    local = fn(V[:, start:stop]) if stop > start else []
    if len(local) != stop - start:
        raise ValueError(f"split_columns: fn gave {len(local)} results for {stop - start} columns")
    parts: list[Any] = [None] * world
    dist.all_gather_object(parts, local, group=group)
    return [x for part in parts for x in part]


class ShardedCausalMap:
    """A :class:`~melbo.maps.protocol.CausalMap` whose primitives are split by columns over the
    ranks of ``group`` and all-gathered (module docstring). Without an initialised process
    group it is the wrapped map (one rank).

    Every rank must call every primitive with the same arguments, in the same order.

    Parameters
    ----------
    delta : CausalMap — this rank's map (same model, prompts and layers on every rank)
    group : ProcessGroup, optional — default: the world
    """

    def __init__(self, delta: CausalMap, group: dist.ProcessGroup | None = None) -> None:
        self.delta = check_delta(delta)
        self.group = group

    @property
    def d_model(self) -> int:
        return self.delta.d_model

    @property
    def dtype(self) -> torch.dtype:
        return self.delta.dtype

    @property
    def device(self) -> torch.device:
        return self.delta.device

    @property
    def source_layer(self) -> int | None:
        """The wrapped map's source layer (None if it has none): a fit records it in its features."""
        return getattr(self.delta, "source_layer", None)

    @property
    def target_layer(self) -> int | None:
        """The wrapped map's target layer (None if it has none)."""
        return getattr(self.delta, "target_layer", None)

    @property
    def world_size(self) -> int:
        return _world(self.group)[0]

    @property
    def rank(self) -> int:
        return _world(self.group)[1]

    def _sharded(self, fn: Callable[..., Tensor], *mats: Tensor, n_out: int = 1) -> Tensor:
        """fn on this rank's columns of ``mats`` (each (d, m)); gathered, shape (n_out·d, m)."""
        d, m = self.d_model, mats[0].shape[1]
        for name, X in zip(("first", "second"), mats):
            if X.ndim != 2 or X.shape != (d, m):
                raise ValueError(f"{name} argument must have shape (d_model={d}, m={m}), got {tuple(X.shape)}")
        world, rank = _world(self.group)
        if world == 1:
            return fn(*mats)
        start, stop, block = shard_bounds(m, world, rank)
        if stop > start:
            local = fn(*(X[:, start:stop] for X in mats))  # (n_out·d, stop-start)
        else:
            local = torch.zeros(n_out * d, 0, dtype=self.dtype, device=self.device)
        padded = torch.zeros(n_out * d, block, dtype=self.dtype, device=self.device)
        padded[:, : stop - start] = local.to(device=self.device, dtype=self.dtype)
        parts = [torch.empty_like(padded) for _ in range(world)]
        dist.all_gather(parts, padded, group=self.group)
        return torch.cat(parts, dim=1)[:, :m]  # (n_out·d, m)

    def value(self, theta: Tensor) -> Tensor:
        """Δ at m points, sharded. (d, m) → (d, m)."""
        return self._sharded(self.delta.value, theta)

    def value_and_vjp(self, theta: Tensor, U: Tensor) -> tuple[Tensor, Tensor]:
        """(Δ(θ_ℓ), J(θ_ℓ)ᵀ u_ℓ), sharded; one all-gather for both. (d, m) ×2 → (d, m) ×2."""

        def both(th: Tensor, u: Tensor) -> Tensor:
            val, g = self.delta.value_and_vjp(th, u)
            return torch.cat([val, g], dim=0)  # (2d, c)

        out = self._sharded(both, theta, U, n_out=2)
        d = self.d_model
        return out[:d], out[d:]

    def vjp(self, theta: Tensor, U: Tensor) -> Tensor:
        """J(θ_ℓ)ᵀ u_ℓ, sharded. (d, m), (d, m) → (d, m)."""
        return self._sharded(self.delta.vjp, theta, U)

    def jvp0(self, V: Tensor) -> Tensor:
        """J(0) v_ℓ, sharded. (d, m) → (d, m)."""
        return self._sharded(self.delta.jvp0, V)

    def hvv0(self, V: Tensor) -> Tensor:
        """T⁽²⁾(·, v_ℓ, v_ℓ), sharded. (d, m) → (d, m)."""
        return self._sharded(self.delta.hvv0, V)

    def uhv0(self, U: Tensor, V: Tensor) -> Tensor:
        """T⁽²⁾(u_ℓ, v_ℓ, ·), sharded. (d, m), (d, m) → (d, m)."""
        return self._sharded(self.delta.uhv0, U, V)


def _common_seed(random_state: RandomState, device: torch.device, group: dist.ProcessGroup | None) -> RandomState:
    """None → a fresh seed drawn on rank 0 and broadcast, so every rank draws the same init."""
    world, rank = _world(group)
    if random_state is not None or world == 1:
        return random_state
    seed = torch.tensor([int(make_generator(None).initial_seed()) % 2**62 if rank == 0 else 0], device=device)
    dist.broadcast(seed, src=dist.get_global_rank(group, 0) if group is not None else 0, group=group)
    return int(seed.item())


def distributed_fit(estimator: _E, delta: CausalMap, group: dist.ProcessGroup | None = None) -> _E:
    """``estimator.fit`` with the primitives sharded over the ranks of ``group``.

    The single-process code path on a :class:`ShardedCausalMap`: any estimator of
    :mod:`melbo.methods` whose fit needs only the :class:`~melbo.maps.protocol.CausalMap`
    primitives (exponential with every OGI option, quadratic, linear, random), calibration
    of R included. Call it on every rank with the same estimator settings; every rank ends
    with the same fitted attributes, equal to the single-process fit with the same seed up
    to float rounding. ``random_state=None`` draws one seed on rank 0 and broadcasts it
    (a :class:`torch.Generator` must be in the same state on every rank); a ``callback``
    runs on every rank (check ``dist.get_rank() == 0`` to write checkpoints).
    """
    if getattr(estimator, "needs_model", False):
        raise TypeError(f"{type(estimator).__name__} needs the model behind Δ and cannot be sharded by columns")
    sharded = ShardedCausalMap(delta, group)
    seed = _common_seed(estimator.random_state, sharded.device, group)
    if seed is not estimator.random_state:
        estimator = dataclasses.replace(estimator, random_state=seed)  # type: ignore[type-var]
    logger.info("%s sharded over %d ranks (this is rank %d)", type(estimator).__name__, sharded.world_size, sharded.rank)
    return estimator.fit(sharded)


def distributed_exponential_dct(
    delta: CausalMap, n_factors: int = 512, *, group: dist.ProcessGroup | None = None, **options: Any
) -> FitResult:
    """:func:`melbo.fit.exponential.exponential_dct` (same arguments, every OGI option) with
    the factors sharded over the ranks of ``group``: the same function on a
    :class:`ShardedCausalMap` (:func:`distributed_fit` for the seed rule)."""
    sharded = ShardedCausalMap(delta, group)
    options["random_state"] = _common_seed(options.get("random_state"), sharded.device, group)
    logger.info("OGI sharded over %d ranks (this is rank %d)", sharded.world_size, sharded.rank)
    return exponential_dct(sharded, n_factors, **options)


def init_distributed(
    backend: str | None = None, timeout: datetime.timedelta | None = None
) -> tuple[int, int, torch.device]:
    """Join the process group ``torchrun`` describes (``RANK``, ``WORLD_SIZE``,
    ``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT`` in the environment).

    backend : default ``"nccl"`` when CUDA is available, else ``"gloo"``.
    Returns (rank, world_size, device): ``cuda:LOCAL_RANK`` (made current) or the CPU.
    """
    if not dist.is_available():
        raise RuntimeError("torch.distributed is not available in this build of torch")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if not dist.is_initialized():
        backend = backend or ("nccl" if device.type == "cuda" else "gloo")
        kwargs: dict[str, Any] = {"timeout": timeout} if timeout is not None else {}
        if device.type == "cuda":
            kwargs["device_id"] = device
        dist.init_process_group(backend=backend, **kwargs)  # type: ignore[arg-type]
    return dist.get_rank(), dist.get_world_size(), device
