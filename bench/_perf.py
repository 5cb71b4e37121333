"""Benchmark helpers (bench-only, not part of the melbo package): analytic FLOP counts of the slice, matmul peak, named model shapes,
and the publication-style ``vmap`` reference of Δ's primitives.

FLOP count
----------
Matmul FLOPs only (2 per multiply-add); norms, rotary, softmax, activations and the
residual adds are elementwise and left out. For one decoder layer with d = ``d_model``,
H query heads, H_kv key/value heads, head size h, FFN width f, a sequence of T tokens of
which q are queries (q = T except when the last layer of a slice reads target positions
only), the forward pass costs

    linear    = q · 2·d·H·h            (Q projection)
              + T · 2·2·d·H_kv·h       (K, V projections: every token is a key)
              + q · 2·H·h·d            (output projection)
              + q · g·2·d·f            (MLP; g = 3 gated (SwiGLU/GeGLU), 2 plain)
    attention = 2 · 2·H·h·q·K          (scores QKᵀ and A·V; K = T keys)

with K = T (the dense count: eager attention and the math/efficient SDPA kernels compute
the masked entries too) or, with ``causal=True``, the number of unmasked (query, key)
pairs (what a causal flash kernel does).

The backward pass of a VJP w.r.t. the *input* θ (``torch.autograd.grad(…, θ)`` and
``torch.func.vjp`` prune every weight gradient) costs one matmul per linear layer
(dX = dY·Wᵀ) and two per attention matmul (both operands depend on θ), so

    forward + backward = 2·linear + 3·attention

— not the usual 3× forward of training, which would overstate the work of a projection-
dominated slice by about 1.5×. :meth:`FlopCount.vjp` is that sum; :attr:`FlopCount.forward`
the forward alone. :func:`slice_flops` sums layers and sequences.
"""

from __future__ import annotations

import json
import logging
import math
import resource
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from melbo.models.slice import LayerSlice

__all__ = [
    "SHAPES",
    "FlopCount",
    "LayerShape",
    "ModelSpec",
    "PeakResult",
    "VmapCausalMap",
    "build_model",
    "measure_matmul_peak",
    "mlp_is_gated",
    "peak_memory_bytes",
    "reset_peak_memory",
    "slice_flops",
    "synchronize",
]

logger = logging.getLogger(__name__)


# ------------------------------------------------------------------------------ FLOPs
@dataclass(frozen=True)
class FlopCount:
    """Forward matmul FLOPs, split into projections/MLP (``linear``) and attention core."""

    linear: float = 0.0
    attention: float = 0.0

    @property
    def forward(self) -> float:
        """FLOPs of the forward pass."""
        return self.linear + self.attention

    @property
    def vjp(self) -> float:
        """FLOPs of forward + input-gradient backward: 2·linear + 3·attention (module doc)."""
        return 2.0 * self.linear + 3.0 * self.attention

    def __add__(self, other: FlopCount) -> FlopCount:
        return FlopCount(self.linear + other.linear, self.attention + other.attention)

    def __mul__(self, k: float) -> FlopCount:
        return FlopCount(self.linear * k, self.attention * k)

    __rmul__ = __mul__


_GATE_NAMES = ("gate_proj", "gate_up_proj", "w3", "gate")
_NOT_GATED = frozenset({"gpt2", "gpt_neox", "gptj", "opt", "bloom", "falcon", "phi", "gpt_bigcode"})


def mlp_is_gated(layer: nn.Module) -> bool:
    """Whether a decoder layer's MLP is gated (has a ``gate_proj``-like submodule)."""
    return any(name.rsplit(".", 1)[-1] in _GATE_NAMES for name, _ in layer.named_modules())


@dataclass(frozen=True)
class LayerShape:
    """The dimensions of one decoder layer that set its FLOPs.

    Attributes
    ----------
    d_model, n_heads, n_kv_heads, head_dim, ffn : int
    gated : bool — MLP with a gate (3 matrices d×f) rather than 2
    """

    d_model: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    ffn: int
    gated: bool

    def __post_init__(self) -> None:
        for name in ("d_model", "n_heads", "n_kv_heads", "head_dim", "ffn"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"LayerShape.{name} must be a positive int, got {v!r}")

    @classmethod
    def from_config(cls, config: Any, *, gated: bool | None = None) -> LayerShape:
        """Read a Hugging Face config (``text_config`` of multimodal ones is used).

        ``gated=None`` guesses from ``model_type`` (GPT-2, NeoX, … are plain; Llama, Qwen,
        Gemma, Mistral, Phi-3, OLMo are gated); prefer :meth:`from_model`, which looks.
        """
        cfg = getattr(config, "text_config", None) or config
        d = int(_first_attr(cfg, ("hidden_size", "n_embd", "d_model")))
        H = int(_first_attr(cfg, ("num_attention_heads", "n_head")))
        Hkv = int(getattr(cfg, "num_key_value_heads", None) or H)
        hd = int(getattr(cfg, "head_dim", None) or d // H)
        f = int(getattr(cfg, "intermediate_size", None) or getattr(cfg, "n_inner", None) or 4 * d)
        if gated is None:
            gated = str(getattr(cfg, "model_type", "")).lower() not in _NOT_GATED
        return cls(d, H, Hkv, hd, f, gated)

    @classmethod
    def from_model(cls, model: nn.Module) -> LayerShape:
        """From ``model.config``, with ``gated`` read off the first decoder layer's modules."""
        from melbo.models.access import get_layer_access

        layer = get_layer_access(model).layers[0]
        return cls.from_config(model.config, gated=mlp_is_gated(layer))

    def layer_flops(
        self, n_tokens: int, n_queries: int | None = None, *, causal: bool = False, mlp_rows: int | None = None
    ) -> FlopCount:
        """Forward FLOPs of one layer on one sequence (module docstring).

        Parameters
        ----------
        n_tokens : int — T, the (padded) sequence length; every token is a key
        n_queries : int, optional — q ≤ T query positions (the last q tokens); default T
        causal : bool — count only unmasked (query, key) pairs instead of q·T
        mlp_rows : int, optional — positions the MLP runs on (≤ q); default q. melbo's last
            slice layer runs its MLP at the k target positions only, with all T queries.
        """
        T = int(n_tokens)
        q = T if n_queries is None else int(n_queries)
        if not 1 <= q <= T:
            raise ValueError(f"n_queries must be in [1, n_tokens={T}], got {n_queries}")
        r = q if mlp_rows is None else int(mlp_rows)
        if not 1 <= r <= q:
            raise ValueError(f"mlp_rows must be in [1, n_queries={q}], got {mlp_rows}")
        d, H, Hkv, hd, f = self.d_model, self.n_heads, self.n_kv_heads, self.head_dim, self.ffn
        g = 3 if self.gated else 2
        linear = q * (2 * d * H * hd + 2 * H * hd * d) + r * g * 2 * d * f + T * 2 * 2 * d * Hkv * hd
        # queries are the last q tokens: query at absolute index i sees i + 1 keys
        pairs = (q * T - q * (q - 1) // 2) if causal else q * T
        attention = 2 * 2 * H * hd * pairs
        return FlopCount(float(linear), float(attention))


def _first_attr(cfg: Any, names: tuple[str, ...]) -> Any:
    for n in names:
        v = getattr(cfg, n, None)
        if v is not None:
            return v
    raise ValueError(f"config {type(cfg).__name__} has none of {names}")


def slice_flops(
    shape: LayerShape,
    *,
    n_tokens: int,
    n_layers: int,
    n_sequences: int,
    last_layer_queries: int | None = None,
    causal: bool = False,
    last_layer_mlp_rows: int | None = None,
) -> FlopCount:
    """Forward FLOPs of ``n_layers`` decoder layers on ``n_sequences`` sequences of length T.

    ``last_layer_queries``: queries computed in the last layer (a what-if: melbo computes
    all T); None = all T. ``last_layer_mlp_rows``: positions the last layer's MLP runs on
    (melbo: the k targets, :class:`melbo.maps.transformer.TransformerCausalMap`'s
    ``last_layer_targets_only``); None = as many as queries. An OGI iteration with m
    factors and n prompts is ``slice_flops(..., n_sequences=m * n).vjp``.
    """
    if n_layers < 1 or n_sequences < 0:
        raise ValueError(f"need n_layers >= 1 and n_sequences >= 0, got {n_layers}, {n_sequences}")
    full = shape.layer_flops(n_tokens, causal=causal)
    last = shape.layer_flops(n_tokens, last_layer_queries, causal=causal, mlp_rows=last_layer_mlp_rows)
    return (full * (n_layers - 1) + last) * n_sequences


# ------------------------------------------------------------------------------ device helpers
def synchronize(device: torch.device) -> None:
    """Wait for queued kernels on ``device`` (no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak_memory(device: torch.device) -> None:
    """Reset the CUDA peak-memory counter (the CPU's maxrss cannot be reset)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_bytes(device: torch.device) -> int:
    """``torch.cuda.max_memory_allocated`` on a GPU; the process's max RSS on the CPU
    (a high-water mark since the process started, weights and all)."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024)  # bytes on macOS, KiB on Linux


@dataclass(frozen=True)
class PeakResult:
    """Measured matmul throughput. ``flops``: best FLOP/s; ``by_size``: best per size n."""

    flops: float
    dtype: str
    device: str
    by_size: dict[int, float] = field(default_factory=dict)


def measure_matmul_peak(
    dtype: torch.dtype,
    device: torch.device | str,
    sizes: tuple[int, ...] | None = None,
    repeats: int = 3,
    min_seconds: float = 0.05,
) -> PeakResult:
    """Best FLOP/s of square ``n×n @ n×n`` matmuls (2n³ FLOPs each) in ``dtype``.

    Each of ``repeats`` timings runs enough matmuls back to back to last ≥ ``min_seconds``
    (calibrated on a warm-up call); the best of all sizes and repeats is returned.
    ``sizes`` default: (1024, 2048) on the CPU, (4096, 8192) on a GPU.
    """
    device = torch.device(device)
    if sizes is None:
        sizes = (4096, 8192) if device.type == "cuda" else (1024, 2048)
    if repeats < 1 or not sizes or min(sizes) < 1:
        raise ValueError(f"need repeats >= 1 and positive sizes, got repeats={repeats}, sizes={sizes}")
    g = torch.Generator(device=device).manual_seed(0)
    by_size: dict[int, float] = {}
    for n in sizes:
        a = torch.randn(n, n, generator=g, device=device).to(dtype)
        b = torch.randn(n, n, generator=g, device=device).to(dtype)
        synchronize(device)
        t0 = time.perf_counter()
        torch.matmul(a, b)
        synchronize(device)
        warm = max(time.perf_counter() - t0, 1e-6)
        inner = max(1, min(200, math.ceil(min_seconds / warm)))
        best = math.inf
        for _ in range(repeats):
            synchronize(device)
            t0 = time.perf_counter()
            for _ in range(inner):
                torch.matmul(a, b)
            synchronize(device)
            best = min(best, (time.perf_counter() - t0) / inner)
        by_size[n] = 2.0 * n**3 / best
        del a, b
    return PeakResult(max(by_size.values()), str(dtype).replace("torch.", ""), str(device), by_size)


# ------------------------------------------------------------------------------ named shapes
@dataclass(frozen=True)
class ModelSpec:
    """A real model's architecture, to build random-init stand-ins of any depth.

    Attributes
    ----------
    name : str
    config_class : str — a ``transformers`` config class name, e.g. ``"Qwen2Config"``
    kwargs : mapping — the config's values (the real depth and vocabulary included)
    """

    name: str
    config_class: str
    kwargs: Mapping[str, Any]

    @property
    def n_layers(self) -> int:
        return int(self.kwargs["num_hidden_layers"])

    def config(
        self, *, n_layers: int | None = None, vocab_size: int | None = None, attn_implementation: str | None = None
    ) -> Any:
        """The config, optionally cut to ``n_layers`` layers and a ``vocab_size``-token vocabulary."""
        import transformers

        kw = dict(self.kwargs)
        if n_layers is not None:
            if n_layers < 1:
                raise ValueError(f"n_layers must be >= 1, got {n_layers}")
            kw["num_hidden_layers"] = n_layers
            if "layer_types" in kw:
                pattern = list(kw["layer_types"])
                kw["layer_types"] = [pattern[i % len(pattern)] for i in range(n_layers)]
        if vocab_size is not None:
            kw["vocab_size"] = vocab_size
        cfg = getattr(transformers, self.config_class)(**kw)
        if attn_implementation is not None:
            cfg._attn_implementation = attn_implementation
        return cfg

    def layer_shape(self) -> LayerShape:
        gated = self.config_class not in ("GPT2Config", "GPTNeoXConfig")
        return LayerShape.from_config(self.config(n_layers=1, vocab_size=8), gated=gated)


_GEMMA3_270M_TYPES = (["sliding_attention"] * 5 + ["full_attention"]) * 3

SHAPES: dict[str, ModelSpec] = {
    s.name: s
    for s in (
        ModelSpec(
            "qwen1.5-7b",
            "Qwen2Config",
            dict(
                hidden_size=4096, num_attention_heads=32, num_key_value_heads=32, intermediate_size=11008,
                num_hidden_layers=32, vocab_size=151936, max_position_embeddings=32768, rms_norm_eps=1e-6,
                tie_word_embeddings=False,
            ),
        ),
        ModelSpec(
            "qwen2-0.5b",
            "Qwen2Config",
            dict(
                hidden_size=896, num_attention_heads=14, num_key_value_heads=2, intermediate_size=4864,
                num_hidden_layers=24, vocab_size=151936, max_position_embeddings=32768, rms_norm_eps=1e-6,
                tie_word_embeddings=True,
            ),
        ),
        ModelSpec(
            "qwen2.5-7b",
            "Qwen2Config",
            dict(
                hidden_size=3584, num_attention_heads=28, num_key_value_heads=4, intermediate_size=18944,
                num_hidden_layers=28, vocab_size=152064, max_position_embeddings=32768, rms_norm_eps=1e-6,
                tie_word_embeddings=False,
            ),
        ),
        ModelSpec(
            "llama-3-8b",
            "LlamaConfig",
            dict(
                hidden_size=4096, num_attention_heads=32, num_key_value_heads=8, intermediate_size=14336,
                num_hidden_layers=32, vocab_size=128256, max_position_embeddings=8192, rms_norm_eps=1e-5,
                tie_word_embeddings=False,
            ),
        ),
        ModelSpec(
            "gemma-3-270m",
            "Gemma3TextConfig",
            dict(
                hidden_size=640, num_attention_heads=4, num_key_value_heads=1, head_dim=256,
                intermediate_size=2048, num_hidden_layers=18, vocab_size=262144, sliding_window=512,
                layer_types=_GEMMA3_270M_TYPES, query_pre_attn_scalar=256, max_position_embeddings=32768,
            ),
        ),
    )
}
"""Real architectures by name; :func:`build_model` builds random-init stand-ins."""


def build_model(
    spec: ModelSpec | str,
    *,
    n_layers: int,
    vocab_size: int = 256,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    attn_implementation: str = "sdpa",
    seed: int = 0,
) -> nn.Module:
    """A random-init causal LM of a named shape with ``n_layers`` layers and a small vocabulary.

    The weights are drawn in float32 on ``device`` (seeded) and then cast, so the same seed
    gives the same model in every dtype (up to rounding). Eval mode.
    """
    import transformers

    if isinstance(spec, str):
        if spec not in SHAPES:
            raise ValueError(f"unknown model shape {spec!r}; choose one of {', '.join(map(repr, SHAPES))}")
        spec = SHAPES[spec]
    cfg = spec.config(n_layers=n_layers, vocab_size=vocab_size, attn_implementation=attn_implementation)
    device = torch.device(device)
    torch.manual_seed(seed)
    if device.type == "cuda":
        torch.cuda.manual_seed(seed)
    with device:
        model = transformers.AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    model = model.to(dtype)
    model.eval()
    return model


# ------------------------------------------------------------------------------ vmap reference
class VmapCausalMap:
    """Δ's primitives computed the way the publication's code does: ``torch.func.vmap`` over
    factors of a per-factor function (``vjp`` / ``jvp`` of it), in chunks of ``chunk_size``.

    Per factor, Δ(θ) = mean over prompts i and target positions p of
    ``slice(x_i + θ)[p] − y_i[p]`` (θ added at every position), on the same recorded
    :class:`~melbo.models.slice.LayerSlice` as :class:`melbo.maps.transformer.TransformerCausalMap`.
    Needs an attention implementation that ``vmap`` and forward-mode AD go through
    (``"eager"``; the publication used eager attention in fp32). A reference for tests and
    benchmarks; implements :class:`melbo.maps.protocol.CausalMap`.

    Parameters
    ----------
    layer_slice : LayerSlice
    positions : Tensor, shape (n, k) — target positions of each prompt
    chunk_size : int, optional — factors per ``vmap`` chunk (None: all at once)
    """

    def __init__(self, layer_slice: LayerSlice, positions: Tensor, chunk_size: int | None = None) -> None:
        n = layer_slice.n_prompts
        if positions.ndim != 2 or positions.shape[0] != n:
            raise ValueError(f"positions must have shape (n_prompts={n}, k), got {tuple(positions.shape)}")
        if chunk_size is not None and chunk_size < 1:
            raise ValueError(f"chunk_size must be a positive int or None, got {chunk_size!r}")
        self.slice = layer_slice
        self.chunk_size = chunk_size
        x = layer_slice.x
        self._model_dtype = x.dtype
        self._dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
        self._pos = positions.to(x.device)  # (n, k)
        self._rows = torch.arange(n, device=x.device)[:, None].expand_as(self._pos)  # (n, k)
        self._y_target = layer_slice.y[self._rows, self._pos].to(self._dtype)  # (n, k, d)

    @classmethod
    def from_causal_map(cls, cmap: Any, chunk_size: int | None = None) -> VmapCausalMap:
        """Share the recorded slice and target positions of a ``TransformerCausalMap``."""
        return cls(cmap.slice, cmap.prompts.positions, chunk_size)

    @property
    def d_model(self) -> int:
        return int(self.slice.x.shape[-1])

    @property
    def dtype(self) -> torch.dtype:
        return self._dtype

    @property
    def device(self) -> torch.device:
        return self.slice.x.device

    def _f(self, theta: Tensor) -> Tensor:
        """Δ of one factor. theta: (d,) → (d,)."""
        h = self.slice.x + theta.to(self._model_dtype)  # (n, T, d)
        out = self.slice(h)  # (n, T, d)
        picked = out[self._rows, self._pos].to(self._dtype)  # (n, k, d)
        return (picked - self._y_target).mean(dim=(0, 1))  # (d,)

    def _map(self, fn: Callable[..., Any], *cols: Tensor, n_out: int = 1) -> Any:
        for name, c in zip(("first", "second"), cols):
            if c.ndim != 2 or c.shape[0] != self.d_model or c.shape != cols[0].shape:
                raise ValueError(f"{name} argument must have shape (d_model={self.d_model}, m), got {tuple(c.shape)}")
        cols = tuple(c.to(device=self.device, dtype=self._dtype) for c in cols)
        out_dims = 1 if n_out == 1 else (1,) * n_out
        # no_grad outside the transforms: torch.func.vjp/grad still differentiate inside, but
        # the model's parameters (requires_grad=True) no longer keep every chunk's graph alive
        with torch.no_grad():
            return torch.func.vmap(fn, in_dims=(1,) * len(cols), out_dims=out_dims, chunk_size=self.chunk_size)(*cols)

    def value(self, theta: Tensor) -> Tensor:
        """Δ at m points. (d, m) → (d, m)."""
        with torch.no_grad():
            return self._map(self._f, theta)  # type: ignore[no-any-return]

    def value_and_vjp(self, theta: Tensor, U: Tensor) -> tuple[Tensor, Tensor]:
        """(Δ(θ_ℓ), J(θ_ℓ)ᵀ u_ℓ) per column, vmap of ``torch.func.vjp``."""

        def one(th: Tensor, u: Tensor) -> tuple[Tensor, Tensor]:
            val, pullback = torch.func.vjp(self._f, th)[:2]
            return val, pullback(u)[0]

        out: tuple[Tensor, Tensor] = self._map(one, theta, U, n_out=2)
        val, g = out
        return val.detach(), g.detach()

    def vjp(self, theta: Tensor, U: Tensor) -> Tensor:
        """J(θ_ℓ)ᵀ u_ℓ per column. (d, m), (d, m) → (d, m)."""
        return self.value_and_vjp(theta, U)[1]

    def jvp0(self, V: Tensor) -> Tensor:
        """J(0) v_ℓ per column (forward mode). (d, m) → (d, m)."""

        def one(v: Tensor) -> Tensor:
            return torch.func.jvp(self._f, (torch.zeros_like(v),), (v,))[1]

        with torch.no_grad():
            return self._map(one, V).detach()  # type: ignore[no-any-return]

    def hvv0(self, V: Tensor) -> Tensor:
        """T⁽²⁾(·, v_ℓ, v_ℓ) per column. (d, m) → (d, m).

        ∇_w d²/dε² ⟨w, Δ(ε v)⟩ at ε = 0, w = 0 (reverse mode three times: forward over
        forward fails on ops without forward-AD formulas for their backward, e.g. SiLU).
        """

        def one(v: Tensor) -> Tensor:
            def wf(eps: Tensor, w: Tensor) -> Tensor:
                return (self._f(eps * v) * w).sum()

            d2 = torch.func.grad(torch.func.grad(wf, argnums=0), argnums=0)
            eps0 = torch.zeros((), dtype=v.dtype, device=v.device)
            return torch.func.grad(lambda w: d2(eps0, w))(torch.zeros_like(v))

        return self._map(one, V).detach()  # type: ignore[no-any-return]

    def uhv0(self, U: Tensor, V: Tensor) -> Tensor:
        """T⁽²⁾(u_ℓ, v_ℓ, ·) = ∇_θ ⟨v_ℓ, J(θ)ᵀ u_ℓ⟩ at 0 per column (reverse over reverse).

        Not reverse over forward: nested forward-mode through ``layer_norm`` is wrong in
        torch (pytorch/pytorch#196700; GPT-2 gives a 50 % error).
        """

        def one(u: Tensor, v: Tensor) -> Tensor:
            def vjtu(th: Tensor) -> Tensor:
                return (torch.func.vjp(self._f, th)[1](u)[0] * v).sum()

            return torch.func.grad(vjtu)(torch.zeros_like(v))

        return self._map(one, U, V).detach()  # type: ignore[no-any-return]


def write_result(result: Mapping[str, Any], path: str | Path | None = None) -> str:
    """Print a bench's result as indented JSON and, when ``path`` is given, write it there too
    (parents created). Returns the text."""
    text = json.dumps(result, indent=2)
    print(text)
    if path is not None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text + "\n", encoding="utf-8")
    return text
