"""Find the parts of a decoder model by name: layers, final norm, embedding, unembedding and
the two residual-stream writes of every layer. Never mutates the model.

The guesser tries a fixed list of templates per part (see ``_LAYER_PATHS`` etc.) and the
user can override any of them with dotted paths, e.g.
``get_layer_access(model, layers="backbone.blocks", attn_out="mixer.out_proj")``.

Mixture-of-experts layers (Mixtral, Qwen2-MoE, Qwen3-MoE, OLMoE): the MLP write of such a
layer is the output of its sparse-MoE block (``mlp``; ``block_sparse_moe`` in Mixtral before
transformers 5), the router-weighted sum of the chosen experts' down projections plus, in
Qwen2-MoE, the sigmoid-gated shared expert's. That sum is linear in every expert's output, so
projecting a direction out of the block's output is the same as projecting it out of every
expert's and the shared expert's output projection, whichever experts the router picks
(:class:`ExpertLayout`). Two storage layouts of the experts are recognised: one 3-D
``down_proj`` parameter of shape (experts, d_model, d_expert) (transformers ≥ 5, with a
fused ``gate_up_proj``), or a ``ModuleList`` of expert MLPs (transformers 4). Any other
``experts`` module is an :class:`ArchitectureError` that names it.
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
# Relative to one decoder layer: where a sparse mixture-of-experts block lives. A block is a
# module there with an ``experts`` child; its output is the layer's MLP write.
_MOE_BLOCKS = ("mlp", "block_sparse_moe")
# The output projection of one expert MLP when the experts are a ModuleList.
_EXPERT_OUT = ("down_proj", "w2", "c_proj", "fc2")
_SHARED_EXPERTS = ("shared_expert", "shared_experts")

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
    "mixtral",
    "qwen2_moe",
    "qwen3_moe",
    "olmoe",
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


@dataclass(frozen=True)
class ExpertLayout:
    """The sparse mixture-of-experts block of one decoder layer (paths relative to the layer).

    Attributes
    ----------
    block_path : str
        the block whose output is the layer's MLP write.
    n_experts : int
    storage : str
        ``"fused"`` (one 3-D ``down_proj`` parameter, experts × d_model × d_expert) or
        ``"modules"`` (an ``nn.ModuleList`` of expert MLPs).
    shared_expert_path : str or None
        the always-on shared expert (Qwen2-MoE), when the block has one.
    """

    block_path: str
    n_experts: int
    storage: str
    shared_expert_path: str | None

    def describe(self) -> str:
        what = "3-D down_proj" if self.storage == "fused" else "ModuleList"
        shared = f" + shared expert {self.shared_expert_path}" if self.shared_expert_path else ""
        return f"{self.n_experts} experts in {self.block_path}.experts ({what}){shared}"


def expert_layout(layer: nn.Module, where: str = "layer") -> ExpertLayout | None:
    """The mixture-of-experts block of ``layer``, or None for a layer with a dense MLP.

    ``where`` names the layer in errors (e.g. ``"model.layers[3]"``).

    Raises
    ------
    ArchitectureError
        for an ``experts`` module in neither recognised layout (naming it and its type).
    """
    for path in _MOE_BLOCKS:
        block = get_submodule(layer, path)
        experts = getattr(block, "experts", None) if block is not None else None
        if not isinstance(experts, nn.Module):
            continue
        shared = next((f"{path}.{name}" for name in _SHARED_EXPERTS if get_submodule(layer, f"{path}.{name}") is not None), None)
        down = getattr(experts, "down_proj", None)
        if isinstance(down, nn.Parameter) and down.ndim == 3:
            return ExpertLayout(path, int(down.shape[0]), "fused", shared)
        if (
            isinstance(experts, nn.ModuleList)
            and len(experts) > 0
            and all(_first(e, _EXPERT_OUT) is not None for e in experts)
        ):
            return ExpertLayout(path, len(experts), "modules", shared)
        raise ArchitectureError(
            f"unsupported mixture-of-experts layout: {where}.{path}.experts is a "
            f"{type(experts).__name__} with neither a 3-D down_proj parameter (experts, d_model, "
            f"d_expert) nor a ModuleList of expert MLPs with one of {list(_EXPERT_OUT)}. If the "
            f"output of {where}.{path} is the whole MLP write into the residual stream, pass "
            f"get_layer_access(model, mlp_out={path!r})"
        )
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
    experts: tuple[ExpertLayout | None, ...] = ()
    """Per layer, its mixture-of-experts block (None for a dense layer); empty for a dense model."""

    @property
    def is_moe(self) -> bool:
        return any(e is not None for e in self.experts)

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

    def _unembed_name(self) -> str:
        try:
            return type(self.unembed).__name__
        except ArchitectureError:  # a bare decoder: the layer map is still worth showing
            return "none"

    def describe(self) -> dict[str, str | int]:
        """A layer map for humans (used by ``melbo demo`` and ``melbo inspect``)."""
        out: dict[str, str | int] = {
            "family": self.family,
            "n_layers": self.n_layers,
            "d_model": self.d_model,
            "layers": f"{self.layers_path}[0..{self.n_layers - 1}]",
            "attn_write": f"{self.layers_path}[i].{self.attn_out_path}",
            "mlp_write": f"{self.layers_path}[i].{self.mlp_out_path}",
            "final_norm": self.norm_path,
            "embed": self.embed_path,
            "unembed": self._unembed_name(),
        }
        if self.is_moe:
            kinds = {e.describe() for e in self.experts if e is not None}
            sparse = [i for i, e in enumerate(self.experts) if e is not None]
            out["experts"] = f"{'; '.join(sorted(kinds))} in layers {sparse} of {self.n_layers}"
        return out


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
    experts: tuple[ExpertLayout | None, ...] = ()
    if mlp_out is None:  # an explicit mlp_out is the user's word on what writes the stream
        experts = tuple(expert_layout(layer, f"{layers_path}[{i}]") for i, layer in enumerate(layer_list))
        blocks = sorted({e.block_path for e in experts if e is not None})
        if len(blocks) > 1:
            raise ArchitectureError(f"the mixture-of-experts blocks of {layers_path} sit at different paths {blocks}")
        if blocks:  # dense layers of a MoE model (Qwen-MoE mlp_only_layers) have a module there too
            mlp_candidates = (blocks[0],)
        else:
            experts = ()
    if post is not None:
        attn_candidates = (post[0],) + attn_candidates
        mlp_candidates = (post[1],) + mlp_candidates
    attn_path = resolve("attn_out", attn_out, attn_candidates, layer0)
    mlp_path = resolve("mlp_out", mlp_out, mlp_candidates, layer0)
    for i, layer in enumerate(layer_list):
        for kind, path in (("attn_out", attn_path), ("mlp_out", mlp_path)):
            if get_submodule(layer, path) is None:
                raise ArchitectureError(
                    f"{kind} {path!r} (found in {layers_path}[0]) is missing from {layers_path}[{i}] "
                    f"({type(layer).__name__}); pass get_layer_access(model, {kind}='path') naming a "
                    "module that every layer has"
                )
    access = LayerAccess(
        model=model,
        family=family,
        layers_path=layers_path,
        norm_path=norm_path,
        embed_path=embed_path,
        attn_out_path=attn_path,
        mlp_out_path=mlp_path,
        experts=experts,
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
