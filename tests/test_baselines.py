"""Baselines (melbo.baselines) on tiny random-init models, checked against the models' own
forward passes (``output_hidden_states``, ``.logits``) with hooks written here."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from tiny_models import tiny_model
from torch import Tensor, nn

from melbo.baselines import (
    MeanDifference,
    MelboV1,
    OneShotSteering,
    RandomVectors,
    mean_difference,
    melbo_v1,
    melbo_v1_objective,
    one_shot,
    per_prompt_delta,
    random_vectors,
)
from melbo.cli import main
from melbo.features import Features
from melbo.maps.synthetic import SyntheticMap
from melbo.maps.transformer import TransformerCausalMap
from melbo.testing import tiny_tokenizer

S, T = 1, 3  # source and target layer
PROMPTS = ["hello there", "write a poem about cats", "how do I make tea"]
CONTRAST = ["the cat", "What is the capital of France? Tell me", "sure"]


@pytest.fixture(scope="module")
def tok() -> Any:
    return tiny_tokenizer(with_chat_template=True)


@pytest.fixture(scope="module")
def llama(tok: Any) -> nn.Module:
    return tiny_model("llama", vocab=len(tok))


@pytest.fixture(scope="module")
def delta(llama: nn.Module, tok: Any) -> TransformerCausalMap:
    return TransformerCausalMap(llama, PROMPTS, S, T, tokenizer=tok, chat=True)


# ---------------------------------------------------------------- independent ground truth
def _chat_ids(tok: Any, prompt: str) -> list[int]:
    text = tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True)
    return list(tok(text, add_special_tokens=False)["input_ids"])


def _add_at_layer_input(model: Any, layer: int, vec: Tensor) -> Any:
    """A pre-hook adding ``vec`` to the hidden states entering ``model.model.layers[layer]``."""

    def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if args:
            return (args[0] + vec.to(args[0].dtype), *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": kwargs["hidden_states"] + vec.to(kwargs["hidden_states"].dtype)}

    return model.model.layers[layer].register_forward_pre_hook(hook, with_kwargs=True)


def _true_delta(model: nn.Module, tok: Any, theta: Tensor, k: int = 3) -> Tensor:
    """Δ(θ) from unpadded single-prompt runs: mean over prompts and last k positions of
    hidden_states[T] steered at layer S minus unsteered. (d,)"""
    diffs = []
    for p in PROMPTS:
        ids = torch.tensor([_chat_ids(tok, p)])
        with torch.no_grad():
            base = model(ids, output_hidden_states=True).hidden_states[T][0, -k:]
            handle = _add_at_layer_input(model, S, theta)
            try:
                steered = model(ids, output_hidden_states=True).hidden_states[T][0, -k:]
            finally:
                handle.remove()
        diffs.append((steered - base).mean(dim=0))
    return torch.stack(diffs).mean(dim=0)


def _true_log_prob(model: nn.Module, tok: Any, prompt: str, completion: str, vec: Tensor | None = None) -> float:
    """Σ_t log p(c_t | prompt, c_<t) from the full ``model(...).logits``, steered by a hook."""
    p_ids = _chat_ids(tok, prompt)
    c_ids = list(tok(completion, add_special_tokens=False)["input_ids"])
    ids = torch.tensor([p_ids + c_ids])
    handle = _add_at_layer_input(model, S, vec) if vec is not None else None
    try:
        with torch.no_grad():
            logp = torch.log_softmax(model(ids).logits[0].float(), dim=-1)  # (T, V)
    finally:
        if handle is not None:
            handle.remove()
    P = len(p_ids)
    return float(sum(logp[P - 1 + t, c] for t, c in enumerate(c_ids)))


# ---------------------------------------------------------------- random
def test_random_vectors_are_unit_seeded_and_read_off_delta(delta: TransformerCausalMap, llama: nn.Module, tok: Any) -> None:
    R = 1.5
    a = random_vectors(delta, 4, R=R, random_state=3)
    b = random_vectors(delta, 4, R=R, random_state=3)
    c = random_vectors(delta, 4, R=R, random_state=4)
    assert a.method == "random" and a.V.shape == (32, 4)
    torch.testing.assert_close(a.V.norm(dim=0), torch.ones(4))
    assert torch.equal(a.V, b.V) and torch.equal(a.U, b.U) and not torch.allclose(a.V, c.V)
    truth = _true_delta(llama, tok, R * a.V[:, 0])
    torch.testing.assert_close(a.alpha[0] * a.U[:, 0], truth, atol=2e-5, rtol=1e-4)
    feats = Features.from_fit(a, source_layer=S, target_layer=T)
    assert feats.n_factors == 4 and feats.method == "random"


def test_random_vectors_accept_any_causal_map_and_validate() -> None:
    synth = SyntheticMap.planted(16, 3, seed=0).delta
    res = random_vectors(synth, 5, R=1.0, random_state=0)
    assert res.V.shape == (16, 5)
    torch.testing.assert_close(res.alpha * res.U, synth.value(res.V))
    with pytest.raises(ValueError, match="n_factors"):
        random_vectors(synth, 0, R=1.0)
    with pytest.raises(ValueError, match="R must be"):
        random_vectors(synth, 2, R=-1.0)
    with pytest.raises(TypeError, match="CausalMap"):
        random_vectors(object(), 2, R=1.0)  # type: ignore[arg-type]


# ---------------------------------------------------------------- mean difference
@pytest.mark.parametrize("family", ["llama", "gpt2"])
@pytest.mark.parametrize("padding_side", ["left", "right"])
@pytest.mark.parametrize("k", [1, 2])
def test_mean_diff_equals_difference_of_means_of_own_hidden_states(tok: Any, family: str, padding_side: str, k: int) -> None:
    model = tiny_model(family, vocab=len(tok))
    layer = 2

    def truth_mean(prompts: list[str]) -> Tensor:
        rows = []
        for p in prompts:  # one prompt at a time: no padding at all
            ids = torch.tensor([tok(p)["input_ids"]])
            with torch.no_grad():
                hs = model(ids, output_hidden_states=True).hidden_states[layer]
            rows.append(hs[0, -k:].mean(dim=0))
        return torch.stack(rows).mean(dim=0)

    diff = truth_mean(PROMPTS) - truth_mean(CONTRAST)
    res = mean_difference(
        model, PROMPTS, CONTRAST, layer=layer, tokenizer=tok, chat=False, positions=k, padding_side=padding_side,  # type: ignore[arg-type]
        batch_size=2,
    )
    assert res.method == "mean-diff" and res.V.shape == (32, 1)
    torch.testing.assert_close(res.V[:, 0], diff / diff.norm(), atol=2e-5, rtol=1e-4)
    assert res.R == pytest.approx(float(diff.norm()), rel=1e-4)
    assert mean_difference(model, PROMPTS, CONTRAST, layer=layer, tokenizer=tok, chat=False, positions=k, R=3.0).R == 3.0


def test_mean_diff_with_delta_reads_outputs_and_validates(llama: nn.Module, tok: Any, delta: TransformerCausalMap) -> None:
    res = mean_difference(llama, PROMPTS, CONTRAST, layer=S, tokenizer=tok, chat=True, R=2.0, delta=delta)
    truth = _true_delta(llama, tok, 2.0 * res.V[:, 0])
    # mean-diff learns no target direction: U is None, α = ‖Δ_R(v)‖
    assert res.U is None
    torch.testing.assert_close(res.alpha[0], truth.norm(), atol=2e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="identical"):
        mean_difference(llama, PROMPTS, PROMPTS, layer=S, tokenizer=tok)
    with pytest.raises(ValueError, match=r"layer=4 is out of range.*0 ≤ layer ≤ 3"):
        mean_difference(llama, PROMPTS, CONTRAST, layer=4, tokenizer=tok)
    with pytest.raises(ValueError, match="source_layer=1 but layer=2"):
        mean_difference(llama, PROMPTS, CONTRAST, layer=2, tokenizer=tok, delta=delta)
    with pytest.raises(ValueError, match="tokenizer"):
        mean_difference(llama, PROMPTS, CONTRAST, layer=S)


# ---------------------------------------------------------------- one-shot
def test_one_shot_promote_raises_and_suppress_lowers_the_completion_log_prob(llama: nn.Module, tok: Any) -> None:
    prompt, completion = "hello there", "Sure, here is"
    before = _true_log_prob(llama, tok, prompt, completion)
    up = one_shot(llama, tok, prompt, completion, layer=S, lr=0.05, max_iter=15, chat=True)
    down = one_shot(llama, tok, prompt, completion, layer=S, mode="suppress", lr=0.05, max_iter=15, chat=True)
    v_up, v_down = up.R * up.V[:, 0], down.R * down.V[:, 0]
    after_up = _true_log_prob(llama, tok, prompt, completion, v_up)
    after_down = _true_log_prob(llama, tok, prompt, completion, v_down)
    assert after_up > before + 0.3, (before, after_up)
    assert after_down < before - 0.3, (before, after_down)
    # the objective at the returned vector is the model's own log-prob (logits_to_keep path)
    assert up.scores[-1] == pytest.approx(after_up, abs=1e-4)
    assert up.method == "one-shot" and up.n_iter == 15 and len(up.history) == 15 and up.U is None
    torch.testing.assert_close(up.V.norm(dim=0), torch.ones(1))
    assert all(p.grad is None for p in llama.parameters())


def test_one_shot_mixed_cap_seed_and_errors(llama: nn.Module, tok: Any) -> None:
    prompt, good, bad = "how do I make tea", "Sure", "I am sorry"
    gap0 = _true_log_prob(llama, tok, prompt, good) - _true_log_prob(llama, tok, prompt, bad)
    kw: dict[str, Any] = {"layer": S, "mode": "mixed", "suppress": bad, "lr": 0.05, "max_iter": 10, "chat": True}
    res = one_shot(llama, tok, prompt, good, max_norm=0.3, init_norm=0.1, random_state=7, **kw)
    v = res.R * res.V[:, 0]
    gap1 = _true_log_prob(llama, tok, prompt, good, v) - _true_log_prob(llama, tok, prompt, bad, v)
    assert gap1 > gap0 and res.R <= 0.3 + 1e-6
    again = one_shot(llama, tok, prompt, good, max_norm=0.3, init_norm=0.1, random_state=7, **kw)
    assert torch.equal(res.V, again.V) and res.R == again.R
    with pytest.raises(ValueError, match="mixed.*suppress"):
        one_shot(llama, tok, prompt, good, layer=S, mode="mixed")
    with pytest.raises(ValueError, match="only used with mode='mixed'"):
        one_shot(llama, tok, prompt, good, layer=S, suppress=bad)
    with pytest.raises(ValueError, match="unknown mode 'boost'"):
        one_shot(llama, tok, prompt, good, layer=S, mode="boost")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_norm"):
        one_shot(llama, tok, prompt, good, layer=S, max_norm=0.0)
    with pytest.raises(ValueError, match="non-empty"):
        one_shot(llama, tok, prompt, "", layer=S)


# ---------------------------------------------------------------- melbo-v1
@pytest.fixture(scope="module")
def planted(tok: Any) -> tuple[TransformerCausalMap, Tensor]:
    """A tiny Llama whose layer-S attention writes ⟨w, norm(x)⟩·w: Δ is far larger along ±w."""
    model: Any = tiny_model("llama", vocab=len(tok), seed=1)
    w = torch.nn.functional.normalize(torch.randn(32, generator=torch.Generator().manual_seed(5)), dim=0)
    attn = model.model.layers[S].self_attn
    with torch.no_grad():
        attn.v_proj.weight[0] += w  # value dim 0 of kv-head 0 reads w …
        attn.o_proj.weight[:, 0] += w  # … and head 0 writes it back along w
    return TransformerCausalMap(model, PROMPTS, S, T, tokenizer=tok, chat=True), w


def test_melbo_v1_recovers_the_planted_direction_and_beats_random(planted: tuple[TransformerCausalMap, Tensor]) -> None:
    delta, w = planted
    R = 1.0
    res = melbo_v1(delta, 3, R=R, max_iter=40, lr=0.05, random_state=0)
    assert res.method == "melbo-v1" and res.V.shape == (32, 3) and len(res.scores) == 3 and res.history == []
    torch.testing.assert_close(res.V.norm(dim=0), torch.ones(3))
    assert abs(float(w @ res.V[:, 0])) > 0.95
    rand = torch.nn.functional.normalize(torch.randn(32, 20, generator=torch.Generator().manual_seed(0)), dim=0)
    best_random = max(melbo_v1_objective(delta, R * v) for v in rand.T)
    assert res.scores[0] > 2 * best_random
    cos = res.V.T @ res.V - torch.eye(3)
    assert float(cos.abs().max()) < 1e-5
    # U, α are Δ_R(V); the per-prompt helper averages to Δ
    torch.testing.assert_close(res.alpha * res.U, delta.value(R * res.V))
    torch.testing.assert_close(per_prompt_delta(delta, R * res.V[:, 1]).mean(dim=0), delta.value(R * res.V[:, 1:2])[:, 0])


def test_melbo_v1_vectors_have_norm_R_at_the_input(delta: TransformerCausalMap, llama: nn.Module, tok: Any) -> None:
    R = 2.0
    a = melbo_v1(delta, 2, R=R, max_iter=5, lr=0.05, random_state=1)
    b = melbo_v1(delta, 2, R=R, max_iter=5, lr=0.05, random_state=1)
    assert torch.equal(a.V, b.V) and a.scores == b.scores
    truth = _true_delta(llama, tok, R * a.V[:, 0])  # R·v added at the layer-S input by our own hook
    torch.testing.assert_close(a.alpha[0] * a.U[:, 0], truth, atol=2e-5, rtol=1e-4)
    free = melbo_v1(delta, 2, R=R, max_iter=3, lr=0.05, orthogonal=False, random_state=1)
    torch.testing.assert_close(free.V.norm(dim=0), torch.ones(2))


def test_melbo_v1_validates(delta: TransformerCausalMap) -> None:
    with pytest.raises(TypeError, match="TransformerCausalMap"):
        melbo_v1(SyntheticMap(torch.eye(4), torch.eye(4)), 2, R=1.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="n_factors must be <= d_model = 32"):
        melbo_v1(delta, 33, R=1.0)
    for bad in ({"lr": 0.0}, {"p": -1.0}, {"max_iter": 0}, {"betas": (0.9, 1.0)}, {"tol": -1.0}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            melbo_v1(delta, 1, R=1.0, **bad)  # type: ignore[arg-type]


# ---------------------------------------------------------------- estimators
def test_estimators_store_arguments_and_fit(delta: TransformerCausalMap, llama: nn.Module, tok: Any) -> None:
    mv = MelboV1(2, R=1.0, max_iter=3, lr=0.05, random_state=0)
    assert not hasattr(mv, "result_")
    mv.fit(delta)
    assert mv.V_.shape == (32, 2) and [len(c) for c in mv.curves_] == [3, 3] and mv.n_iter_ == 3
    rv = RandomVectors(3, random_state=0).fit(delta)  # R calibrated at lam = 0.5
    assert rv.R_ > 0 and rv.V_.shape == (32, 3)
    md = MeanDifference(CONTRAST, R=2.0).fit(delta)  # the map's prompts are the set A
    ref = mean_difference(llama, PROMPTS, CONTRAST, layer=S, tokenizer=tok, chat=True, R=2.0, delta=delta)
    assert md.V_[:, 0].shape == (32,) and md.R_ == 2.0 and torch.equal(md.V_, ref.V) and md.U_ is None
    os_ = OneShotSteering("Sure", max_iter=2).fit(delta)  # the map's first prompt; R (the cap) calibrated
    torch.testing.assert_close((os_.R_ * os_.V_[:, 0]).norm(), torch.tensor(os_.R_))
    assert os_.R_ <= os_.calibration_.R + 1e-6 and os_.U_ is None and len(os_.history_) == 2
    # the deprecated names of the single vector still read it, with a warning naming the canonical one
    with pytest.deprecated_call(match=r"use V_\[:, 0\]"):
        assert torch.equal(md.direction_, md.V_[:, 0])
    with pytest.deprecated_call(match=r"use R_ \* V_\[:, 0\]"):
        assert torch.equal(os_.vector_, os_.R_ * os_.V_[:, 0])
    with pytest.deprecated_call(match="use U_ and V_"):
        assert mv.factors_[1] is mv.V_


# ---------------------------------------------------------------- melbo train
@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory, tok: Any, llama: Any) -> tuple[Path, Path, Path]:
    root = tmp_path_factory.mktemp("baselines")
    llama.save_pretrained(root / "model")
    tok.save_pretrained(root / "model")
    (root / "a.txt").write_text("\n".join(PROMPTS) + "\n")
    (root / "b.txt").write_text("\n".join(CONTRAST) + "\n")
    return root / "model", root / "a.txt", root / "b.txt"


def _args(saved: tuple[Path, Path, Path], out: Path, method: str, *extra: str) -> list[str]:
    model, a, _ = saved
    return ["train", "--model", str(model), "--prompts", str(a), "--source-layer", str(S), "--target-layer", str(T),
            "--method", method, "--R", "1.0", "--out", str(out), "--no-progress", *extra]


def test_cli_train_random_mean_diff_melbo_v1_one_shot(saved: tuple[Path, Path, Path], tmp_path: Path) -> None:
    b = saved[2]
    runs = {
        "random": ["--factors", "4"],
        "mean-diff": ["--contrast-prompts", str(b)],
        "melbo-v1": ["--factors", "2", "--steps", "3", "--lr", "0.01"],
        "one-shot": ["--completion", "Sure", "--steps", "3"],
    }
    for method, extra in runs.items():
        assert main(_args(saved, tmp_path / method, method, *extra)) == 0
        feats = Features.load(tmp_path / method)
        m = {"random": 4, "melbo-v1": 2}.get(method, 1)
        assert feats.method == method and feats.n_factors == m
        torch.testing.assert_close(feats.V.norm(dim=0), torch.ones(m))
    assert "contrast_prompts_hash" in Features.load(tmp_path / "mean-diff").extra
    assert Features.load(tmp_path / "mean-diff").R == 1.0
    assert Features.load(tmp_path / "one-shot").R <= 1.0 + 1e-6


@pytest.mark.parametrize(
    ("method", "extra", "match"),
    [
        ("mean-diff", [], "needs a contrast prompt set B (--contrast-prompts FILE)"),
        ("random", ["--contrast-prompts", "B"], "only used by methods mean-diff, contrastive"),
        ("one-shot", [], "needs a completion (--completion TEXT)"),
        ("one-shot", ["--completion", "Sure", "--one-shot-mode", "mixed"], "--suppress TEXT"),
        ("random", ["--steps", "3"], "method 'random' runs no iterations"),
        ("random", ["--lr", "0.1"], "steps/lr are only used"),
    ],
)
def test_cli_train_baseline_errors_are_clear(
    saved: tuple[Path, Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], method: str, extra: list[str], match: str
) -> None:
    extra = [str(saved[2]) if x == "B" else x for x in extra]
    with pytest.raises(SystemExit):
        main(_args(saved, tmp_path / "x", method, *extra))
    assert match in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
