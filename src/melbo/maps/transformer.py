"""The causal map Δ of a real model, with its four batched primitives (``method.md`` §1).

    Δ(θ) = mean_i mean_{p∈P} [ F_{s→t}(x_i + θ)[p] − y_i[p] ]

The unsteered run (x, y and every argument the layers receive) is recorded once. Each
primitive folds its m factors into the batch — factor ℓ on prompt i is sequence
``ℓ·n + i`` — and runs in chunks of factors sized from a memory budget, so any attention
kernel works (no ``vmap``) and results do not depend on the chunk size.

Derivatives use reverse mode only, which every attention implementation supports:
``J(θ)ᵀu`` is one backward pass; ``J(0)v`` and the second-order products at 0 use the
double/triple-backward trick on a per-factor scalar ε (θ_ℓ = ε_ℓ v_ℓ). Higher-order passes
run with the math SDPA kernel, the only one with double-backward formulas on every device.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import torch
from torch import Tensor, nn

from melbo.dtypes import resolve_dtype
from melbo.models.access import LayerAccess, get_layer_access
from melbo.models.hooks import gather_positions
from melbo.models.slice import LayerSlice, capture_slice
from melbo.prompts import Positions, PromptBatch, PromptLike, build_prompts
from melbo.store.compile_cache import resolve_compile_cache

logger = logging.getLogger(__name__)
_T = TypeVar("_T")

DEFAULT_MEMORY_BUDGET = 2 * 1024**3  # bytes of activations per chunk on the CPU


def default_memory_budget(device: torch.device) -> int:
    """Bytes of activations one chunk of factors may use when the caller names none.

    On the CPU :data:`DEFAULT_MEMORY_BUDGET` (2 GiB: larger chunks do not run faster there).
    On a CUDA device half of the memory free when the map is built (at least 2 GiB): a GPU
    is fast only on large matmuls, and with a 2 GiB budget the 7B-shape job of
    ``bench/gpu_check.py`` ran in chunks of 17 factors. Out-of-memory still halves the
    chunk (:meth:`TransformerCausalMap._run_chunks`).
    """
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return max(DEFAULT_MEMORY_BUDGET, int(free) // 2)
    return DEFAULT_MEMORY_BUDGET


@contextlib.contextmanager
def _math_sdpa() -> Iterator[None]:
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
    except ImportError:  # pragma: no cover - old torch
        yield
        return
    with sdpa_kernel(SDPBackend.MATH):
        yield


def _resolve_compute_dtype(dtype: torch.dtype | str | None, model_dtype: torch.dtype) -> torch.dtype:
    try:
        resolved = resolve_dtype(dtype)
    except (TypeError, ValueError) as err:
        raise ValueError(f"compute_dtype={dtype!r}: {err}") from None
    return model_dtype if resolved is None else resolved


class TransformerCausalMap:
    """Δ for a Hugging Face decoder model; implements :class:`melbo.maps.protocol.CausalMap`.

    Parameters
    ----------
    model : a causal LM (not modified; its parameters' ``requires_grad`` is irrelevant)
    prompts : a :class:`PromptBatch`, or prompts to tokenise with ``tokenizer``
    source_layer, target_layer : 0 ≤ s < t ≤ n_layers; θ is added to ``hidden_states[s]``
        and Δ is read from ``hidden_states[t]``
    positions : target positions (last k tokens, default 3, or per-prompt index lists)
    memory_budget : bytes of activations one chunk of factors may use (default:
        :func:`default_memory_budget` — 2 GiB on the CPU, half the free memory on a GPU)
    chunk_size : factors per chunk (overrides the budget)
    compute_dtype : run the slice's matmuls in this dtype under ``torch.autocast`` (e.g.
        ``"bfloat16"`` on GPUs and AVX-512-BF16 CPUs); Δ and every update are still
        accumulated in fp32. Default: the model's own dtype, no autocast.
    compile : run each slice layer through ``torch.compile`` (wrappers held by the slice;
        the model is not changed). Fuses the elementwise work around the matmuls, which is
        what keeps bf16 from its matmul peak on CPUs. Compiling costs ~20 s on a 2-core CPU
        (and once more for a shape-generic graph when a second chunk shape appears), ~2 s in
        a later process that finds ``compile_cache``; it pays on long fits (many factors or
        iterations), not on a few calls. Results equal the eager ones up to rounding. A string names the
        ``torch.compile`` backend (``True`` is ``"inductor"``).
    compile_cache : where torch keeps the compiled graphs and kernels, so that a second
        process compiling the same slice loads them instead of compiling again (see
        :mod:`melbo.store.compile_cache`): ``True`` (default) is ``<melbo cache>/compile``, a path
        names another directory, ``False`` leaves torch's own setting. Only the compiled
        layers' calls see it; the user's other ``torch.compile`` calls do not.
    last_layer_targets_only : the slice's last layer runs its MLP only at the target
        positions, the only ones Δ reads (exact: the MLP acts on each token alone; see
        :meth:`melbo.models.slice.LayerSlice.__call__`). Applies where that layer runs
        eagerly (not when compiled). False computes every position.

    Public attributes besides the protocol: ``model``, ``access``, ``source_layer``,
    ``target_layer``, ``prompts`` (the tokenised :class:`PromptBatch`), ``raw_prompts`` (the
    prompts as given, None when a PromptBatch was given), ``tokenizer``, ``chat`` and
    ``system_prompt`` (as given), ``positions`` (n, k) and ``targets`` (n, k, d): what the
    methods that need more than Δ (:mod:`melbo.baselines`) read.
    """

    def __init__(
        self,
        model: nn.Module,
        prompts: PromptBatch | Sequence[PromptLike],
        source_layer: int,
        target_layer: int,
        *,
        tokenizer: Any = None,
        positions: Positions = 3,
        chat: bool | str = "auto",
        system_prompt: str | None = None,
        access: LayerAccess | None = None,
        memory_budget: int | None = None,
        chunk_size: int | None = None,
        compute_dtype: torch.dtype | str | None = None,
        compile: bool | str = False,
        compile_cache: bool | str | os.PathLike[str] = True,
        last_layer_targets_only: bool = True,
    ) -> None:
        if not isinstance(compile, (bool, str)):
            raise ValueError(f"compile={compile!r}: must be True, False or a torch.compile backend name")
        if isinstance(compile, str) and compile not in torch._dynamo.list_backends(exclude_tags=()):
            raise ValueError(f"compile={compile!r}: not a torch.compile backend; "
                             f"valid: {', '.join(torch._dynamo.list_backends(exclude_tags=()))}")
        self.access = access if access is not None else get_layer_access(model)
        self.access.check_layer_range(source_layer, target_layer)
        if isinstance(prompts, PromptBatch):
            batch = prompts
        else:
            if tokenizer is None:
                raise ValueError("prompts given as text need a tokenizer (tokenizer=...)")
            batch = build_prompts(
                tokenizer,
                prompts,
                chat=chat,  # type: ignore[arg-type]
                system_prompt=system_prompt,
                positions=positions,
                model_config=getattr(model, "config", None),
            )
        if chunk_size is not None and (not isinstance(chunk_size, int) or chunk_size < 1):
            raise ValueError(f"chunk_size={chunk_size!r}: must be a positive int")
        if memory_budget is not None and memory_budget <= 0:
            raise ValueError(f"memory_budget={memory_budget!r}: must be a positive number of bytes")
        self.model = model
        self.tokenizer = tokenizer
        self.chat = chat
        self.system_prompt = system_prompt
        self.raw_prompts: tuple[PromptLike, ...] | None = None if isinstance(prompts, PromptBatch) else tuple(prompts)
        self.source_layer = source_layer
        self.target_layer = target_layer
        param = next(model.parameters())
        batch = batch.to(param.device)
        self.prompts = batch
        self.slice: LayerSlice = capture_slice(
            self.access, batch.input_ids, batch.attention_mask, source_layer, target_layer
        )
        self._model_dtype = self.slice.x.dtype
        self._dtype = torch.float64 if self._model_dtype == torch.float64 else torch.float32
        # A half-precision model's residual stream would round a small θ away (bf16 keeps 8 bits:
        # on Gemma-3-270M calibration found no R at all). The slice runs it in fp32 instead, with
        # each layer's weights cast to fp32 on the fly; the matmuls still run in the model's
        # dtype under autocast (compute_dtype's default), so the speed stays the model's.
        self._residual_dtype = self._dtype
        self._pos = batch.positions  # (n, k)
        self._y_target = gather_positions(self.slice.y, batch.positions).to(device=param.device, dtype=self._dtype)  # (n, k, d)
        self._oom_cap: dict[int, int] = {}
        self.memory_budget = memory_budget or default_memory_budget(self.device)
        self.chunk_size = chunk_size
        self.compute_dtype = _resolve_compute_dtype(compute_dtype, self._model_dtype)
        if self._model_dtype != self._residual_dtype:
            # linear weights stay as they are where autocast casts them for the matmul anyway
            self.slice.cast = (self._residual_dtype, self.compute_dtype == self._residual_dtype)
        self.last_layer_targets_only = bool(last_layer_targets_only)
        cache = resolve_compile_cache(compile_cache)
        if compile:
            self.slice.compile_layers("inductor" if compile is True else compile, cache=cache)
        if self.compute_dtype != self._residual_dtype or self._model_dtype != self._residual_dtype:
            # Unsteered targets through the same path as the steered ones, so that Δ(0) = 0
            # (the model's own forward rounds differently).
            with torch.no_grad():
                self._y_target = self._targets_at(torch.zeros(1, self.d_model, dtype=self._dtype, device=self.device))

    # -- protocol properties ---------------------------------------------------------
    @property
    def d_model(self) -> int:
        return int(self.slice.x.shape[-1])

    @property
    def dtype(self) -> torch.dtype:
        return self._dtype

    @property
    def device(self) -> torch.device:
        return self.slice.x.device

    @property
    def n_prompts(self) -> int:
        return self.slice.n_prompts

    @property
    def positions(self) -> Tensor:
        """Target positions P, shape (n, k): absolute token indices of each prompt (never padding)."""
        return self._pos

    @property
    def targets(self) -> Tensor:
        """Unsteered target activations y_i[p] at :attr:`positions`, shape (n, k, d), in :attr:`dtype`."""
        return self._y_target

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.compute_dtype == self._residual_dtype:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.compute_dtype)

    def steered_stream(self, shifts: Tensor, *, eager: bool = False, read: Tensor | None = None) -> Tensor:
        """The residual stream entering the target layer with ``shifts[j]`` added to every
        token of every prompt at the source layer. ``shifts``: (c, d) → (c*n, T, d), factor-major
        (row ``j*n + i`` is shift j on prompt i), in the residual dtype (fp32 for half-precision
        models); differentiable. ``read``: the positions the caller reads (see
        :meth:`LayerSlice.__call__ <melbo.models.slice.LayerSlice.__call__>`)."""
        c, n = shifts.shape[0], self.n_prompts
        x = self.slice.x.to(self._residual_dtype)
        h = x.repeat(c, 1, 1) + shifts.to(device=x.device, dtype=self._residual_dtype).repeat_interleave(n, dim=0)[:, None, :]
        with self._autocast():
            return self.slice(h, eager=eager, read=read)

    def _targets_at(self, shifts: Tensor, *, eager: bool = False) -> Tensor:
        """Steered activations at the target positions, (c*n, k, d) in :attr:`dtype`."""
        c = shifts.shape[0]
        pos = self._pos.to(self.slice.x.device).repeat(c, 1)  # (c*n, k)
        out = self.steered_stream(shifts, eager=eager, read=pos if self.last_layer_targets_only else None)
        # with device_map the slice ends on the last layer's device: bring the rows home
        return gather_positions(out, pos).to(device=self.device, dtype=self._dtype)

    # -- chunking ----------------------------------------------------------------------
    def bytes_per_factor(self, order: int = 1) -> int:
        """Rough activation memory of one factor (n sequences through the slice)."""
        cfg = getattr(self.model, "config", None)
        d = self.d_model
        ffn = int(getattr(cfg, "intermediate_size", None) or getattr(cfg, "n_inner", None) or 4 * d)
        heads = int(getattr(cfg, "num_attention_heads", None) or getattr(cfg, "n_head", None) or 1)
        n, T = self.slice.x.shape[:2]
        L = self.target_layer - self.source_layer
        elem = torch.empty(0, dtype=self._residual_dtype).element_size()
        per_token = 16 * d + 4 * ffn + 2 * heads * T
        return int(n * T * L * per_token * elem * (1 + order))

    def _chunk_len(self, order: int) -> int:
        if self.chunk_size is not None:
            return self.chunk_size
        c = max(1, self.memory_budget // max(1, self.bytes_per_factor(order)))
        return min(c, self._oom_cap.get(order, c))

    def _chunks(self, m: int, order: int = 1) -> Iterator[slice]:
        c = self._chunk_len(order)
        for start in range(0, m, c):
            yield slice(start, min(m, start + c))

    def _run_chunks(self, fn: Callable[[slice], _T], m: int, order: int) -> list[_T]:
        """``[fn(chunk) for chunk in chunks]``, halving the chunk on out-of-memory.

        A smaller chunk changes only how the columns are batched, never the result; the
        reduced size is kept for later calls of the same derivative order.
        """
        c = self._chunk_len(order)
        outs: list[_T] = []
        start = 0
        with self.slice.compile_scope():
            while start < m:
                sl = slice(start, min(m, start + c))
                try:
                    outs.append(fn(sl))
                except torch.OutOfMemoryError:
                    if c == 1:
                        raise
                    c = max(1, c // 2)
                    self._oom_cap[order] = c
                    logger.warning("out of memory with %d factors per chunk; retrying with %d", 2 * c, c)
                    if self.device.type == "cuda":
                        torch.cuda.empty_cache()
                    continue
                start = sl.stop
        return outs

    # -- the map -------------------------------------------------------------------------
    def _delta(self, theta: Tensor, *, eager: bool = False) -> Tensor:
        """Δ for one chunk, differentiable. theta: (d, c) → (d, c) in self.dtype.

        ``eager``: bypass compiled layers (needed for higher-order derivatives)."""
        d, c = theta.shape
        picked = self._targets_at(theta.T, eager=eager)  # (c*n, k, d)
        diff = picked - self._y_target.repeat(c, 1, 1)
        return diff.reshape(c, -1, d).mean(dim=1).T  # (d, c)

    def _check(self, name: str, M: Tensor) -> Tensor:
        if M.ndim != 2 or M.shape[0] != self.d_model:
            raise ValueError(f"{name} must have shape (d_model={self.d_model}, m), got {tuple(M.shape)}")
        return M.to(device=self.device, dtype=self._dtype)

    def _map_chunks(self, fn: Callable[[slice], Tensor], m: int, order: int) -> Tensor:
        outs = self._run_chunks(fn, m, order)
        return torch.cat(outs, dim=1) if outs else torch.zeros(self.d_model, 0, dtype=self._dtype, device=self.device)

    def value(self, theta: Tensor) -> Tensor:
        """Δ at m points. theta: (d, m) → (d, m)."""
        theta = self._check("theta", theta)
        with torch.no_grad():
            return self._map_chunks(lambda sl: self._delta(theta[:, sl]), theta.shape[1], 0)

    def value_and_vjp(self, theta: Tensor, U: Tensor) -> tuple[Tensor, Tensor]:
        """(Δ(θ_ℓ), J(θ_ℓ)ᵀ u_ℓ) for every column, one forward + one backward per chunk."""
        theta = self._check("theta", theta)
        U = self._check("U", U)
        if U.shape != theta.shape:
            raise ValueError(f"U has shape {tuple(U.shape)} but theta has {tuple(theta.shape)}")

        def chunk(sl: slice) -> tuple[Tensor, Tensor]:
            th = theta[:, sl].detach().requires_grad_(True)
            with torch.enable_grad():
                dl = self._delta(th)
                (g,) = torch.autograd.grad((dl * U[:, sl]).sum(), th)
            return dl.detach(), g

        outs = self._run_chunks(chunk, theta.shape[1], 1)
        if not outs:
            empty = torch.zeros(self.d_model, 0, dtype=self._dtype, device=self.device)
            return empty, empty.clone()
        return torch.cat([v for v, _ in outs], dim=1), torch.cat([g for _, g in outs], dim=1)

    def vjp(self, theta: Tensor, U: Tensor) -> Tensor:
        """J(θ_ℓ)ᵀ u_ℓ for every column. (d, m), (d, m) → (d, m)."""
        return self.value_and_vjp(theta, U)[1]

    def jvp0(self, V: Tensor) -> Tensor:
        """J(0) v_ℓ for every column (double backward on θ_ℓ = ε_ℓ v_ℓ). (d, m) → (d, m)."""
        V = self._check("V", V)

        def chunk(sl: slice) -> Tensor:
            v = V[:, sl]
            eps = torch.zeros(v.shape[1], dtype=self._dtype, device=self.device, requires_grad=True)
            w = torch.zeros_like(v, requires_grad=True)
            with torch.enable_grad(), _math_sdpa():
                dl = self._delta(v * eps, eager=True)
                (g,) = torch.autograd.grad((dl * w).sum(), eps, create_graph=True)  # ⟨w_ℓ, J v_ℓ⟩
                (jv,) = torch.autograd.grad(g.sum(), w)
            return jv

        return self._map_chunks(chunk, V.shape[1], 2)

    def hvv0(self, V: Tensor) -> Tensor:
        """T⁽²⁾(·, v_ℓ, v_ℓ) = d²/dε² Δ(ε v_ℓ) at 0 for every column. (d, m) → (d, m)."""
        V = self._check("V", V)

        def chunk(sl: slice) -> Tensor:
            v = V[:, sl]
            eps = torch.zeros(v.shape[1], dtype=self._dtype, device=self.device, requires_grad=True)
            w = torch.zeros_like(v, requires_grad=True)
            with torch.enable_grad(), _math_sdpa():
                dl = self._delta(v * eps, eager=True)
                (g1,) = torch.autograd.grad((dl * w).sum(), eps, create_graph=True)
                (g2,) = torch.autograd.grad(g1.sum(), eps, create_graph=True)  # ⟨w_ℓ, T(·,v,v)⟩
                (t2,) = torch.autograd.grad(g2.sum(), w)
            return t2

        return self._map_chunks(chunk, V.shape[1], 3)

    def uhv0(self, U: Tensor, V: Tensor) -> Tensor:
        """T⁽²⁾(u_ℓ, v_ℓ, ·) = ∇_θ ⟨u_ℓ, J(θ) v_ℓ⟩ at 0 for every column. (d, m) → (d, m)."""
        U = self._check("U", U)
        V = self._check("V", V)
        if U.shape != V.shape:
            raise ValueError(f"U has shape {tuple(U.shape)} but V has {tuple(V.shape)}")

        def chunk(sl: slice) -> Tensor:
            theta = torch.zeros_like(V[:, sl], requires_grad=True)
            with torch.enable_grad(), _math_sdpa():
                dl = self._delta(theta, eager=True)
                (g,) = torch.autograd.grad((dl * U[:, sl]).sum(), theta, create_graph=True)  # Jᵀu
                (h,) = torch.autograd.grad((g * V[:, sl]).sum(), theta)
            return h

        return self._map_chunks(chunk, V.shape[1], 2)

    def readout(self, theta: Tensor, fn: Callable[[Tensor], Tensor]) -> Tensor:
        """Mean of a per-position readout of the steered target activations, minus unsteered.

        ``fn`` maps target-position activations of shape (B, k, d) (model dtype) to scores
        of shape (B, k). Returns, shape (m,), ``mean_{i,p} fn(F(x_i + θ_ℓ))[p] − fn(y_i)[p]``.
        """
        theta = self._check("theta", theta)
        n, k = self._pos.shape
        base = fn(self._y_target.to(self._model_dtype)).to(self._dtype)  # (n, k)

        def chunk(sl: slice) -> Tensor:
            c = sl.stop - sl.start
            picked = self._targets_at(theta[:, sl].T).to(self._model_dtype)
            scores = fn(picked).to(self._dtype) - base.repeat(c, 1)  # (c*n, k)
            return scores.reshape(c, n * k).mean(dim=1)

        with torch.no_grad():
            outs = self._run_chunks(chunk, theta.shape[1], 0)
        return torch.cat(outs) if outs else torch.zeros(0, dtype=self._dtype, device=self.device)

    def describe(self) -> dict[str, Any]:
        n, T = self.prompts.input_ids.shape
        return {
            "source_layer": self.source_layer,
            "target_layer": self.target_layer,
            "n_prompts": n,
            "padded_length": T,
            "target_positions": int(self._pos.shape[1]),
            "d_model": self.d_model,
            "model_dtype": str(self._model_dtype).replace("torch.", ""),
            "residual_dtype": str(self._residual_dtype).replace("torch.", ""),
            "compute_dtype": str(self.compute_dtype).replace("torch.", ""),
            "compiled": self.slice.compiled,
            "template": self.prompts.template,
        }


