"""Find the parts of a decoder model by name: layers, final norm, embedding, unembedding and
the two residual-stream writes of every layer. Never mutates the model.

The guesser tries a fixed list of templates per part (see ``_LAYER_PATHS`` etc.) and the
user can override any of them with dotted paths, e.g.
``get_layer_access(model, layers="backbone.blocks", attn_out="mixer.out_proj")``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from torch import nn

logger = logging.getLogger(__name__)

# Paths of the decoder-layer list, tried in order (relative to the model).
_LAYER_PATHS = (
    "model.layers",  # Llama, Mistral, Qwen2/3, Gemma2/3 (text), Phi-3, OLMo2
    "model.language_model.layers",  # Gemma3 multimodal, Llava-style wrappers
    "model.model.layers",
    "transformer.h",  # GPT-2, GPT-J, Falcon
    "gpt_neox.layers",  # GPT-NeoX, Pythia
    "model.decoder.layers",  # OPT
    "layers",  # a bare decoder (e.g. LlamaModel)
    "h",
)
_NORM_PATHS = (
    "model.norm",
    "model.language_model.norm",
    "model.model.norm",
    "transformer.ln_f",
    "gpt_neox.final_layer_norm",
    "model.decoder.final_layer_norm",
    "norm",
    "ln_f",
)
_EMBED_PATHS = (
    "model.embed_tokens",
    "model.language_model.embed_tokens",
    "model.model.embed_tokens",
    "transformer.wte",
    "gpt_neox.embed_in",
    "model.decoder.embed_tokens",
    "embed_tokens",
    "wte",
)
# Relative to one decoder layer: the module whose *output* is added to the residual stream.
# Post-norm families (Gemma2/3, OLMo2) write the output of a norm, not of the projection.
_ATTN_OUT = (
    "self_attn.o_proj",
    "attn.c_proj",
    "attention.dense",
    "self_attn.dense",
    "attn.out_proj",
    "self_attn.out_proj",
)
_MLP_OUT = (
    "mlp.down_proj",
    "mlp.c_proj",
    "mlp.dense_4h_to_h",
    "mlp.fc2",
    "mlp.fc_out",
    "fc2",
)
# Families whose attention / MLP outputs pass through a norm before the residual add.
_POST_NORM_WRITES = {
    "gemma2": ("post_attention_layernorm", "post_feedforward_layernorm"),
    "gemma3": ("post_attention_layernorm", "post_feedforward_layernorm"),
    "gemma3_text": ("post_attention_layernorm", "post_feedforward_layernorm"),
    "olmo2": ("post_attention_layernorm", "post_feedforward_layernorm"),
}

SUPPORTED_FAMILIES = (
    "llama",
    "mistral",
    "qwen2",
    "qwen3",
    "gemma2",
    "gemma3",
    "gemma3_text",
    "gpt2",
    "gpt_neox",
    "phi3",
    "olmo2",
)


class ArchitectureError(ValueError):
    """The model's parts could not be found by name."""


def get_submodule(root: nn.Module, path: str) -> nn.Module | None:
    """Return ``root.<path>`` or None when any part of the dotted path is missing."""
    mod: object = root
    for part in path.split("."):
        if not part:
            return None
        if isinstance(mod, nn.ModuleList) and part.isdigit():
            idx = int(part)
            if idx >= len(mod):
                return None
            mod = mod[idx]
            continue
        mod = getattr(mod, part, None)
        if mod is None:
            return None
    return mod if isinstance(mod, nn.Module) else None


def _first(root: nn.Module, paths: tuple[str, ...]) -> tuple[str, nn.Module] | None:
    for p in paths:
        m = get_submodule(root, p)
        if m is not None:
            return p, m
    return None


def _family(model: nn.Module) -> str:
    cfg = getattr(model, "config", None)
    return str(getattr(cfg, "model_type", type(model).__name__)).lower()


@dataclass(frozen=True)
class LayerAccess:
    """Named parts of a decoder-only transformer.

    ``layers[i]`` maps the residual stream ``hidden_states[i]`` to ``hidden_states[i+1]``.
    ``attn_out(i)`` / ``mlp_out(i)`` are the modules whose outputs are the attention and MLP
    writes into the residual stream of layer ``i``.
    """

    model: nn.Module
    family: str
    layers_path: str
    norm_path: str
    embed_path: str
    attn_out_path: str
    mlp_out_path: str

    @property
    def layers(self) -> nn.ModuleList:
        mod = get_submodule(self.model, self.layers_path)
        assert isinstance(mod, nn.ModuleList)
        return mod

    @property
    def n_layers(self) -> int:
        return len(self.layers)

    @property
    def d_model(self) -> int:
        emb = self.embed
        weight = getattr(emb, "weight", None)
        if weight is None:
            raise ArchitectureError(f"embedding {self.embed_path!r} has no weight")
        return int(weight.shape[1])

    @property
    def final_norm(self) -> nn.Module:
        mod = get_submodule(self.model, self.norm_path)
        assert mod is not None
        return mod

    @property
    def embed(self) -> nn.Module:
        mod = get_submodule(self.model, self.embed_path)
        assert mod is not None
        return mod

    @property
    def unembed(self) -> nn.Module:
        """The output embedding (weight of shape (vocab, d))."""
        get = getattr(self.model, "get_output_embeddings", None)
        out = get() if callable(get) else None
        if not isinstance(out, nn.Module):
            raise ArchitectureError(
                f"{type(self.model).__name__} has no output embedding (get_output_embeddings() "
                "returned None); load it as a *ForCausalLM model"
            )
        return out

    def attn_out(self, i: int) -> nn.Module:
        mod = get_submodule(self.layers[i], self.attn_out_path)
        assert mod is not None
        return mod

    def mlp_out(self, i: int) -> nn.Module:
        mod = get_submodule(self.layers[i], self.mlp_out_path)
        assert mod is not None
        return mod

    def check_layer(self, layer: object, name: str = "layer") -> int:
        """Validate one layer index 0 ≤ layer < n_layers (a message that states the valid range).

        Raises
        ------
        TypeError
            for anything but an int (bool included).
        ValueError
            for an index out of range.
        """
        n = self.n_layers
        if isinstance(layer, bool) or not isinstance(layer, int):
            raise TypeError(f"{name} must be an int, got {layer!r}")
        if not 0 <= layer < n:
            raise ValueError(f"{name}={layer} is out of range: this model has {n} layers, so 0 ≤ {name} ≤ {n - 1}")
        return layer

    def check_layer_range(self, source_layer: int, target_layer: int) -> None:
        """Validate 0 ≤ s < t ≤ n_layers with a message that states the valid range."""
        n = self.n_layers
        self.check_layer(source_layer, "source_layer")
        if isinstance(target_layer, bool) or not isinstance(target_layer, int):
            raise TypeError(f"target_layer must be an int, got {target_layer!r}")
        if not source_layer < target_layer <= n:
            raise ValueError(
                f"target_layer={target_layer} is invalid for source_layer={source_layer}: "
                f"need {source_layer + 1} ≤ target_layer ≤ {n}"
            )

    def describe(self) -> dict[str, str | int]:
        """A layer map for humans (used by ``melbo demo`` and ``melbo inspect``)."""
        return {
            "family": self.family,
            "n_layers": self.n_layers,
            "d_model": self.d_model,
            "layers": f"{self.layers_path}[0..{self.n_layers - 1}]",
            "attn_write": f"{self.layers_path}[i].{self.attn_out_path}",
            "mlp_write": f"{self.layers_path}[i].{self.mlp_out_path}",
            "final_norm": self.norm_path,
            "embed": self.embed_path,
            "unembed": type(self.unembed).__name__,
        }


def get_layer_access(
    model: nn.Module,
    *,
    layers: str | None = None,
    final_norm: str | None = None,
    embed: str | None = None,
    attn_out: str | None = None,
    mlp_out: str | None = None,
) -> LayerAccess:
    """Locate the parts of ``model`` by name; any part can be given as a dotted path.

    Raises
    ------
    ArchitectureError
        naming the part that was not found and every path that was tried.
    """
    family = _family(model)

    def resolve(kind: str, override: str | None, candidates: tuple[str, ...], root: nn.Module) -> str:
        if override is not None:
            if get_submodule(root, override) is None:
                raise ArchitectureError(
                    f"{kind} override {override!r} does not name a submodule of "
                    f"{type(root).__name__}"
                )
            return override
        found = _first(root, candidates)
        if found is None:
            raise ArchitectureError(
                f"could not find the {kind} of {type(root).__name__} (model_type={family!r}); "
                f"tried {list(candidates)}. Pass it explicitly, e.g. "
                f"get_layer_access(model, {kind}='path.to.module'). "
                f"Supported families: {', '.join(SUPPORTED_FAMILIES)}"
            )
        return found[0]

    layers_path = resolve("layers", layers, _LAYER_PATHS, model)
    layer_list = get_submodule(model, layers_path)
    if not isinstance(layer_list, nn.ModuleList) or len(layer_list) == 0:
        raise ArchitectureError(f"{layers_path!r} is not a non-empty nn.ModuleList")
    norm_path = resolve("final_norm", final_norm, _NORM_PATHS, model)
    embed_path = resolve("embed", embed, _EMBED_PATHS, model)
    layer0 = layer_list[0]
    post = _POST_NORM_WRITES.get(family)
    attn_candidates: tuple[str, ...] = _ATTN_OUT
    mlp_candidates: tuple[str, ...] = _MLP_OUT
    if post is not None:
        attn_candidates = (post[0],) + attn_candidates
        mlp_candidates = (post[1],) + mlp_candidates
    attn_path = resolve("attn_out", attn_out, attn_candidates, layer0)
    mlp_path = resolve("mlp_out", mlp_out, mlp_candidates, layer0)
    access = LayerAccess(
        model=model,
        family=family,
        layers_path=layers_path,
        norm_path=norm_path,
        embed_path=embed_path,
        attn_out_path=attn_path,
        mlp_out_path=mlp_path,
    )
    logger.debug("layer access for %s: %s", family, access.describe())
    return access


def resolve_access(model: nn.Module, access: LayerAccess | None = None) -> LayerAccess:
    """``access`` when it was built for ``model`` (an error otherwise), else
    :func:`get_layer_access` of ``model``."""
    if access is None:
        return get_layer_access(model)
    if access.model is not model:
        raise ValueError("access was built for another model (access.model is not model)")
    return access
