"""LayerSlice reproduces the model's own hidden states, for every supported family."""

import pytest
import torch
import transformers
from tiny_models import CONFIGS, FAMILIES, MOE_FAMILIES, ListMoE, list_moe_llama, tiny_model

from melbo.models.access import ArchitectureError, get_layer_access
from melbo.models.hooks import position_ids
from melbo.models.slice import capture_slice


def _padded_batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 96, (3, 11), generator=g)
    mask = torch.ones_like(ids)
    mask[0, :3] = 0  # left padding
    mask[1, -2:] = 0  # right padding
    return ids, mask


def _params(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("family", FAMILIES)
def test_slice_reproduces_hidden_states_exactly(family: str, attn: str) -> None:
    model = tiny_model(family, attn=attn)
    access = get_layer_access(model)
    ids, mask = _padded_batch()
    with torch.no_grad():
        hs = model(input_ids=ids, attention_mask=mask, position_ids=position_ids(mask), output_hidden_states=True, use_cache=False).hidden_states
    for s, t in [(0, 1), (0, 3), (1, 3), (2, 4)]:
        sl = capture_slice(access, ids, mask, s, t)
        assert torch.equal(sl.x, hs[s])
        with torch.no_grad():
            out = sl(hs[s])
        if t < access.n_layers:  # hidden_states[-1] is after the final norm
            assert (out - hs[t]).abs().max().item() == 0.0, (family, attn, s, t)
        assert torch.equal(out, sl.y)


@pytest.mark.parametrize("family", FAMILIES)
def test_slice_folds_factor_copies_into_the_batch(family: str) -> None:
    model = tiny_model(family, attn="sdpa")
    access = get_layer_access(model)
    ids, mask = _padded_batch(1)
    sl = capture_slice(access, ids, mask, 1, 3)
    shift = torch.randn(2, 1, 1, sl.x.shape[-1])
    h = (sl.x[None] + shift).reshape(6, *sl.x.shape[1:])  # factor-major copies
    with torch.no_grad():
        folded = sl(h).reshape(2, 3, *sl.x.shape[1:])
        for j in range(2):
            single = sl(sl.x + shift[j])
            torch.testing.assert_close(folded[j], single, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_capture_leaves_model_untouched(family: str) -> None:
    model = tiny_model(family)
    before = _params(model)
    cfg_before = model.config.to_json_string()
    access = get_layer_access(model)
    ids, mask = _padded_batch()
    sl = capture_slice(access, ids, mask, 0, 2)
    with torch.no_grad():
        sl(sl.x)
    after = _params(model)
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert model.config.to_json_string() == cfg_before
    for mod in model.modules():
        assert not mod._forward_hooks and not mod._forward_pre_hooks


def test_layer_access_finds_post_norm_writes_for_gemma() -> None:
    acc = get_layer_access(tiny_model("gemma3"))
    assert acc.attn_out_path == "post_attention_layernorm"
    assert acc.mlp_out_path == "post_feedforward_layernorm"
    acc = get_layer_access(tiny_model("gpt2"))
    assert (acc.attn_out_path, acc.mlp_out_path) == ("attn.c_proj", "mlp.c_proj")


def test_unknown_architecture_lists_what_was_tried() -> None:
    class Weird(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.blocks = torch.nn.ModuleList([torch.nn.Linear(2, 2)])

    with pytest.raises(ArchitectureError, match=r"tried \['model.layers'"):
        get_layer_access(Weird())
    with pytest.raises(ArchitectureError, match="does not name a submodule"):
        get_layer_access(Weird(), layers="nope.layers")


@pytest.mark.parametrize(("s", "t", "msg"), [(-1, 2, "source_layer=-1"), (4, 5, "source_layer=4"), (2, 2, "target_layer=2"), (1, 9, "target_layer=9")])
def test_bad_layer_indices_name_the_valid_range(s: int, t: int, msg: str) -> None:
    access = get_layer_access(tiny_model("llama"))
    ids, mask = _padded_batch()
    with pytest.raises(ValueError, match=msg):
        capture_slice(access, ids, mask, s, t)


@pytest.mark.parametrize("family", MOE_FAMILIES)
def test_layer_access_finds_the_mixture_of_experts_blocks(family: str) -> None:
    model = tiny_model(family)
    acc = get_layer_access(model)
    assert acc.is_moe and acc.mlp_out_path == "mlp" and acc.attn_out_path == "self_attn.o_proj"
    for i, layer in enumerate(acc.layers):
        e = acc.experts[i]
        if family == "qwen2_moe" and i == 2:  # mlp_only_layers: a dense MLP, still at "mlp"
            assert e is None and hasattr(acc.mlp_out(i), "down_proj")
            continue
        assert e is not None and (e.block_path, e.n_experts, e.storage) == ("mlp", 4, "fused")
        assert e.shared_expert_path == ("mlp.shared_expert" if family == "qwen2_moe" else None)
        assert acc.mlp_out(i) is layer.mlp and layer.mlp.experts.down_proj.shape == (4, 32, layer.mlp.experts.down_proj.shape[2])
    assert "4 experts in mlp.experts (3-D down_proj)" in str(acc.describe()["experts"])
    assert not get_layer_access(tiny_model("llama")).is_moe


def test_layer_access_reads_experts_stored_as_a_module_list() -> None:
    acc = get_layer_access(list_moe_llama())
    assert acc.mlp_out_path == "mlp"
    assert all(e is not None and (e.n_experts, e.storage, e.shared_expert_path) == (4, "modules", "mlp.shared_expert") for e in acc.experts)


def test_layer_access_finds_a_transformers_4_mixtral_block_sparse_moe() -> None:
    """Mixtral before transformers 5 kept its experts at ``block_sparse_moe`` (no ``mlp``)."""
    layer = torch.nn.Module()
    layer.self_attn = torch.nn.Module()
    layer.self_attn.o_proj = torch.nn.Linear(32, 32)
    layer.block_sparse_moe = ListMoE(32)
    model = torch.nn.Module()
    model.model = torch.nn.Module()
    model.model.layers = torch.nn.ModuleList([layer])
    model.model.embed_tokens = torch.nn.Embedding(96, 32)
    model.model.norm = torch.nn.LayerNorm(32)
    acc = get_layer_access(model)
    assert acc.mlp_out_path == "block_sparse_moe" and acc.experts[0] is not None
    assert acc.experts[0].storage == "modules"


def test_a_bare_decoder_without_unembedding_has_layer_access() -> None:
    acc = get_layer_access(tiny_model("llama").model)  # LlamaModel: "layers", "norm", ...
    assert (acc.layers_path, acc.describe()["unembed"]) == ("layers", "none")
    with pytest.raises(ArchitectureError, match="no output embedding"):
        _ = acc.unembed


def test_unsupported_expert_layout_is_an_error_naming_the_module() -> None:
    model = tiny_model("olmoe")
    model.model.layers[1].mlp.experts = torch.nn.Linear(32, 32)  # a copy of our own making
    with pytest.raises(ArchitectureError, match=r"model\.layers\[1\]\.mlp\.experts is a Linear"):
        get_layer_access(model)
    acc = get_layer_access(model, mlp_out="mlp")  # the user's word on what writes the stream
    assert acc.mlp_out_path == "mlp" and not acc.experts


def test_a_write_missing_from_a_later_layer_is_an_error_naming_it() -> None:
    model = tiny_model("llama")
    del model.model.layers[3].mlp.down_proj
    with pytest.raises(ArchitectureError, match=r"'mlp.down_proj' .* is missing from model\.layers\[3\]"):
        get_layer_access(model)


def test_router_jitter_in_training_mode_is_refused_and_eval_is_exact() -> None:
    cfg = CONFIGS["mixtral"]()
    cfg.router_jitter_noise = 0.5
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(cfg).eval()
    access = get_layer_access(model)
    ids, mask = _padded_batch()
    model.train()
    try:
        with torch.no_grad():
            a, b = (model(input_ids=ids, attention_mask=mask).logits for _ in range(2))
        assert not torch.equal(a, b)  # why: every training-mode forward is different
        with pytest.raises(ValueError, match=r"training mode.*config\.router_jitter_noise=0\.5.*model\.eval\(\)"):
            capture_slice(access, ids, mask, 0, 2)
    finally:
        model.eval()
    sl = capture_slice(access, ids, mask, 0, 2)
    with torch.no_grad():
        assert torch.equal(sl(sl.x), sl.y)
