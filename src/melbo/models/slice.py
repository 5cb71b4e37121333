"""Run decoder layers s..t-1 on a residual stream, exactly as the model itself would.

The model computes its own attention masks (causal, sliding-window, padding) and rotary
embeddings; rather than re-implementing them per family, :func:`capture_slice` runs the
model once with temporary forward pre-hooks on layers ``s..t-1`` that record the arguments
each layer receives, and stops the forward pass after layer ``t-1``. :meth:`LayerSlice.__call__`
then replays those layers with a new residual stream. The model's modules, config and
parameters are never touched; every hook is removed in a ``finally``.

Factors can be folded into the batch: ``LayerSlice.__call__(h)`` accepts ``h`` of shape
``(c * n, T, d)`` (factor-major: row ``j * n + i`` is factor ``j`` on prompt ``i``) and
repeats the recorded per-prompt arguments ``c`` times.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cache, partial
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from melbo.models.access import LayerAccess
from melbo.models.hooks import layer_input, layer_output, residual_stream
from melbo.store.compile_cache import torch_compile_cache

logger = logging.getLogger(__name__)


def _repeat_batch(obj: Any, n: int, c: int) -> Any:
    """Repeat every tensor whose leading dim is the prompt batch ``n`` ``c`` times (factor-major)."""
    if c == 1:
        return obj
    if isinstance(obj, Tensor):
        if obj.ndim >= 2 and obj.shape[0] == n:
            return obj.repeat(c, *([1] * (obj.ndim - 1)))
        return obj
    if isinstance(obj, tuple):
        return tuple(_repeat_batch(o, n, c) for o in obj)
    if isinstance(obj, list):
        return [_repeat_batch(o, n, c) for o in obj]
    if isinstance(obj, dict):
        return {k: _repeat_batch(v, n, c) for k, v in obj.items()}
    return obj


def _cast_float(obj: Any, dtype: torch.dtype) -> Any:
    """Cast floating tensors (e.g. rotary cos/sin, additive masks) to ``dtype``."""
    if isinstance(obj, Tensor):
        return obj.to(dtype) if obj.is_floating_point() else obj
    if isinstance(obj, tuple):
        return tuple(_cast_float(o, dtype) for o in obj)
    if isinstance(obj, list):
        return [_cast_float(o, dtype) for o in obj]
    if isinstance(obj, dict):
        return {k: _cast_float(v, dtype) for k, v in obj.items()}
    return obj


def _linear_weights(layer: nn.Module) -> frozenset[str]:
    """Names of the parameters of ``layer``'s ``nn.Linear`` modules."""
    return frozenset(f"{name}.{p}" if name else p for name, mod in layer.named_modules()
                     if isinstance(mod, nn.Linear) for p, _ in mod.named_parameters(recurse=False))


def _detached_call(layer: nn.Module, cast: tuple[torch.dtype, bool] | None, h: Tensor, *args: Any,
                   **kwargs: Any) -> Any:
    """``layer(h, *args, **kwargs)`` with detached parameters. With ``cast = (dtype, linear)``,
    its floating parameters and buffers are cast to ``dtype`` first (copies: the model keeps its
    own), except those of ``nn.Linear`` modules when ``linear`` is False: under autocast a
    linear layer casts its weight to the compute dtype anyway, so it needs no copy."""
    tensors: dict[str, Tensor] = {name: p.detach() for name, p in layer.named_parameters()}
    if cast is not None:
        dtype, linear = cast
        skip = frozenset() if linear else _linear_weights(layer)
        tensors = {k: v.to(dtype) if v.is_floating_point() and k not in skip else v for k, v in tensors.items()}
        tensors.update({k: b.to(dtype) for k, b in layer.named_buffers() if b.is_floating_point() and b.dtype != dtype})
    return torch.func.functional_call(layer, tensors, (h, *args), kwargs)


@cache
def _compiled_call(backend: str) -> Any:
    """One compiled wrapper per backend, shared by every slice (Dynamo caches per code object).
    Made on first use: ``torch.compile`` imports ``torch._dynamo``, which is slow to import
    and sets ``$TORCHINDUCTOR_CACHE_DIR`` in the environment as it does."""
    return torch.compile(_detached_call, dynamic=None, backend=backend)


@contextlib.contextmanager
def _mlp_on_rows(layer: nn.Module, rows: Tensor) -> Iterator[None]:
    """Run the layer's MLP (``layer.mlp``) only on the positions ``rows`` (shape (B, k)).

    A pre-hook gathers those rows of the MLP input; a forward hook scatters the MLP output
    back into zeros of the full length. The MLP of every decoder family acts on each token
    on its own (a mixture-of-experts block too: its router picks each token's experts from
    that token alone, with no capacity limit), so the gathered rows' outputs equal the full
    computation's, and the layer's output is exact at ``rows``; at other positions it lacks
    the MLP's contribution. Layers without an ``mlp`` module run unchanged. Both hooks are
    removed on exit.
    """
    mlp = getattr(layer, "mlp", None)
    if not isinstance(mlp, nn.Module):
        yield
        return
    lengths: list[int] = []

    def index(x: Tensor) -> Tensor:
        return rows[:, :, None].expand(-1, -1, x.shape[-1])

    def gather(_mod: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
        x = args[0] if args else None
        if not isinstance(x, Tensor) or x.ndim != 3 or x.shape[0] != rows.shape[0]:
            return None  # not the per-token call this expects: leave it whole
        lengths.append(x.shape[1])
        return (x.gather(1, index(x)), *args[1:])

    def scatter(_mod: nn.Module, _args: tuple[Any, ...], out: Any) -> Any:
        if not lengths:
            return None
        T = lengths.pop()
        first = out[0] if isinstance(out, tuple) else out
        if not isinstance(first, Tensor):
            raise RuntimeError(f"{type(mlp).__name__} returned {type(out).__name__}, not a tensor")
        full = first.new_zeros(first.shape[0], T, first.shape[-1]).scatter(1, index(first), first)
        return (full, *out[1:]) if isinstance(out, tuple) else full

    handles = [mlp.register_forward_pre_hook(gather, prepend=True), mlp.register_forward_hook(scatter)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


@dataclass
class LayerSlice:
    """Layers ``source_layer .. target_layer-1`` of a model with their recorded inputs.

    Attributes
    ----------
    x : Tensor, shape (n, T, d)
        ``hidden_states[source_layer]`` of the recorded prompts.
    y : Tensor, shape (n, T, d)
        ``hidden_states[target_layer]`` (the output of layer ``target_layer-1``, before any
        final norm) of the recorded prompts.
    """

    access: LayerAccess
    source_layer: int
    target_layer: int
    x: Tensor
    y: Tensor
    _calls: list[tuple[tuple[Any, ...], dict[str, Any]]] = field(repr=False)
    _compiled: dict[int, Any] = field(default_factory=dict, repr=False)
    compile_cache: Path | None = field(default=None, repr=False)
    #: ``(dtype, linear)``: run the layers with their floating parameters cast to ``dtype``
    #: (those of ``nn.Linear`` modules only if ``linear``; see :func:`_detached_call`); None: as
    #: they are. A half-precision model gets an fp32 residual stream this way (see
    #: :class:`melbo.maps.transformer.TransformerCausalMap`); the model itself is never changed.
    cast: tuple[torch.dtype, bool] | None = field(default=None, repr=False)

    def compile_layers(self, backend: str = "inductor", cache: Path | None = None) -> None:
        """Replay the slice's layers through ``torch.compile`` (the compiled callables are
        kept here; the model's modules are not replaced). Each layer runs under
        ``torch.func.functional_call`` with *detached* parameters, so a compiled backward
        computes input gradients only, never weight gradients, whatever the parameters'
        ``requires_grad``. ``dynamic=None``: a second chunk shape compiles one shape-generic
        version instead of one per shape. ``backend``: a ``torch.compile`` backend
        (``"aot_eager"`` traces and differentiates the same way without generating code).
        ``cache``: the directory of torch's persistent compile caches while the compiled
        layers run (see :meth:`compile_scope`); None leaves torch's setting alone."""
        self.compile_cache = cache
        call = _compiled_call(backend)
        for idx in range(self.source_layer, self.target_layer):
            if idx not in self._compiled:
                self._compiled[idx] = partial(call, self.access.layers[idx], self.cast)

    @property
    def compiled(self) -> bool:
        return bool(self._compiled)

    def compile_scope(self) -> contextlib.AbstractContextManager[None]:
        """Where compiling happens, torch's compile caches point at :attr:`compile_cache`.

        Torch compiles lazily: the forward on a layer's first call with a new shape or grad
        mode, the backward on its first backward pass. Callers wrap both, the slice call and
        the ``autograd.grad`` that follows, in this scope (a no-op when nothing is compiled).
        """
        return torch_compile_cache(self.compile_cache if self._compiled else None)

    @property
    def n_prompts(self) -> int:
        return int(self.x.shape[0])

    def __call__(
        self, h: Tensor, *, stop: int | None = None, eager: bool = False, read: Tensor | None = None
    ) -> Tensor:
        """Run the slice on a residual stream.

        Parameters
        ----------
        h : Tensor, shape (c * n, T, d)
            residual stream entering ``source_layer`` (``c`` copies of the prompt batch).
        stop : int, optional
            run only up to (not including) this layer; default ``target_layer``.
        eager : bool
            run the model's own layers even where compiled ones exist. Higher-order
            derivatives (``create_graph=True``) need it: a compiled backward donates its
            buffers and cannot itself be differentiated (a RuntimeError on CUDA).
        read : Tensor, shape (c * n, k), optional
            the positions of the output the caller reads (distinct per row). The last layer's
            MLP then runs on those positions only (:func:`_mlp_on_rows`) when that layer runs
            eagerly: the output is exact there and incomplete elsewhere.

        Returns
        -------
        Tensor, shape (c * n, T, d): the residual stream entering ``stop``.
        """
        n = self.n_prompts
        if h.ndim != 3 or h.shape[1:] != self.x.shape[1:] or h.shape[0] % n != 0:
            raise ValueError(
                f"residual stream of shape {tuple(h.shape)} does not fit the recorded prompts: "
                f"expected (c*{n}, {self.x.shape[1]}, {self.x.shape[2]})"
            )
        c = h.shape[0] // n
        stop = self.target_layer if stop is None else stop
        layers = self.access.layers
        with contextlib.nullcontext() if eager else self.compile_scope():
            for k, idx in enumerate(range(self.source_layer, stop)):
                args, kwargs = self._calls[k]
                args = _cast_float(_repeat_batch(args, n, c), h.dtype)
                kwargs = _cast_float(_repeat_batch(kwargs, n, c), h.dtype)
                compiled = None if eager else self._compiled.get(idx)
                if compiled is not None:
                    layer = compiled
                elif self.cast is not None:
                    layer = partial(_detached_call, layers[idx], self.cast)
                else:
                    layer = layers[idx]
                restrict = read is not None and idx == self.target_layer - 1 and compiled is None
                with _mlp_on_rows(layers[idx], read) if restrict else contextlib.nullcontext():  # type: ignore[arg-type]
                    h = layer_output(layer(h, *args, **kwargs))
        return h


# Config fields that make a forward pass in training mode random where they are > 0:
# dropout probabilities, and Mixtral's router jitter (multiplicative noise on the MoE input).
_RANDOM_IN_TRAINING = (
    "router_jitter_noise",
    "attention_dropout",
    "hidden_dropout",
    "attn_pdrop",
    "resid_pdrop",
    "embd_pdrop",
    "dropout",
)


def _random_parts(model: nn.Module) -> list[str]:
    """What makes ``model``'s forward pass random: empty in eval mode."""
    if not model.training:
        return []
    found = [
        f"{name} (p={mod.p})"
        for name, mod in model.named_modules()
        if isinstance(mod, nn.Dropout) and mod.training and mod.p > 0
    ]
    cfg = getattr(model, "config", None)
    for key in _RANDOM_IN_TRAINING:
        value = getattr(cfg, key, None)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
            found.append(f"config.{key}={value}")
    return found


def capture_slice(
    access: LayerAccess,
    input_ids: Tensor,
    attention_mask: Tensor | None,
    source_layer: int,
    target_layer: int,
) -> LayerSlice:
    """Run the model once on a prompt batch and record what layers ``s..t-1`` receive.

    Position ids count real tokens only (see :func:`melbo.models.hooks.position_ids`), so models with
    absolute position embeddings (GPT-2) see a left-padded prompt as they see it unpadded.

    Mixture-of-experts layers replay exactly too: the router picks the same experts for the
    same residual stream. In training mode dropout and router jitter would make every run
    different, so a model in training mode with any of them is refused.

    Parameters
    ----------
    input_ids : Tensor, shape (n, T)
    attention_mask : Tensor, shape (n, T), optional (1 = token, 0 = padding)

    Raises
    ------
    ValueError
        for a layer range out of bounds, or a model in training mode whose forward pass is
        random (naming what makes it so).
    """
    access.check_layer_range(source_layer, target_layer)
    random_parts = _random_parts(access.model)
    if random_parts:
        shown = ", ".join(random_parts[:4]) + (f" and {len(random_parts) - 4} more" if len(random_parts) > 4 else "")
        raise ValueError(
            f"the model is in training mode, where {shown} make its forward pass random, so no "
            "slice can reproduce it; call model.eval() first"
        )
    layers = access.layers
    calls: list[tuple[tuple[Any, ...], dict[str, Any]]] = []
    store: dict[str, Tensor] = {}

    def recorder(idx: int):
        def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            h = layer_input(args, kwargs)
            if idx == source_layer:
                store["x"] = h.detach().clone()
            rest_args = args[1:] if args else ()
            rest_kwargs = {k: v for k, v in kwargs.items() if k != "hidden_states"}
            for key in ("past_key_values", "past_key_value", "layer_past"):
                if key in rest_kwargs:
                    rest_kwargs[key] = None
            rest_kwargs["use_cache"] = False
            calls.append((rest_args, rest_kwargs))

        return hook

    store["y"] = residual_stream(
        access.model, layers, [target_layer], input_ids=input_ids, attention_mask=attention_mask,
        extra_hooks=[(layers[idx], recorder(idx)) for idx in range(source_layer, target_layer)],
    )[target_layer].clone()
    if "x" not in store or len(calls) != target_layer - source_layer:
        raise RuntimeError(
            "the model's forward pass did not run the decoder layers as expected "
            f"(recorded {len(calls)} of {target_layer - source_layer} layers)"
        )
    # Positional cache arguments (GPT-2 passes past_key_values positionally) are dropped.
    calls = [(tuple(None if _is_cache(a) else a for a in args), kw) for args, kw in calls]
    return LayerSlice(access, source_layer, target_layer, store["x"], store["y"], calls)


def _is_cache(obj: Any) -> bool:
    return type(obj).__name__.endswith("Cache")
