"""Jailbreak scores against the model's own logits, edits, folding, token rules and refusals."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from tiny_models import tiny_model

from melbo.evaluate.refusal import REFUSAL_PHRASES, is_refusal, refusal_rate
from melbo.evaluate.scores import (
    feature_scores,
    generate_for_features,
    jailbreak_score,
    last_position_logits,
    resolve_score_tokens,
    score_edit,
    steered_scores,
)
from melbo.features import Features
from melbo.generation import generate, generate_steered
from melbo.prompts import build_prompts
from melbo.steering.interventions import ablate, steer, steer_features

PROMPTS = ["hello there", "write a poem about the sea and the sky please", "how"]  # different lengths
A, B = "Sure", "I"  # single tokens of the tiny tokenizer ("Sorry" is not)


def _reference(model: torch.nn.Module, tok: Any, prompts: list[str], a: int, b: int) -> torch.Tensor:
    """logits[-1, a] − logits[-1, b] from the model's full forward, one unpadded prompt at a time."""
    out = []
    for p in prompts:
        batch = build_prompts(tok, [p], chat=True, positions=1)
        with torch.no_grad():
            logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        out.append(float(logits[0, -1, a] - logits[0, -1, b]))
    return torch.tensor(out)


@pytest.mark.parametrize("family", ["llama", "gpt2", "gemma2", "gemma3"])
def test_jailbreak_score_equals_the_models_own_logit_difference_with_left_padding(tok: Any, family: str) -> None:
    model = tiny_model(family, vocab=len(tok))
    a, b = resolve_score_tokens(tok, A).ids[0], resolve_score_tokens(tok, B).ids[0]
    score = jailbreak_score(model, tok, PROMPTS, token_a=A, token_b=B, batch_size=2)  # padded batches
    assert score.shape == (3,) and score.dtype == torch.float32
    torch.testing.assert_close(score, _reference(model, tok, PROMPTS, a, b), rtol=1e-5, atol=1e-5)
    # …and equals the padded batch's own logits when given the generation position ids
    batch = build_prompts(tok, PROMPTS, chat=True, positions=1, padding_side="left")
    pos = (batch.attention_mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=pos).logits
    torch.testing.assert_close(score, logits[:, -1, a] - logits[:, -1, b], rtol=1e-5, atol=1e-5)


def test_final_logit_softcapping_is_applied_to_each_logit_before_the_difference(tok: Any) -> None:
    model: Any = tiny_model("gemma2", vocab=len(tok))
    model.config.final_logit_softcapping = 0.05  # small, so capping changes the difference a lot
    a, b = resolve_score_tokens(tok, A).ids[0], resolve_score_tokens(tok, B).ids[0]
    score = jailbreak_score(model, tok, PROMPTS, token_a=A, token_b=B)
    torch.testing.assert_close(score, _reference(model, tok, PROMPTS, a, b), rtol=1e-5, atol=1e-6)
    model.config.final_logit_softcapping = None
    uncapped = jailbreak_score(model, tok, PROMPTS, token_a=A, token_b=B)
    assert (score - uncapped).abs().max() > 1e-3
    assert score.abs().max() < 0.1  # each capped logit lies in (−0.05, 0.05)


def test_score_edit_equals_scoring_inside_steer_and_ablate(llama: torch.nn.Module, tok: Any) -> None:
    g = torch.Generator().manual_seed(1)
    v, w = torch.randn(32, generator=g), torch.randn(32, 2, generator=g)
    a, b = resolve_score_tokens(tok, A).ids[0], resolve_score_tokens(tok, B).ids[0]
    got = score_edit(llama, tok, PROMPTS, steer_vector=v, layer=1, scale=3.0, ablate_directions=w, token_a=A, token_b=B)
    with ablate(llama, w), steer(llama, v, layer=1, scale=3.0):
        inside = jailbreak_score(llama, tok, PROMPTS, token_a=A, token_b=B)
        reference = _reference(llama, tok, PROMPTS, a, b)
    torch.testing.assert_close(got, inside)
    torch.testing.assert_close(got, reference, rtol=1e-5, atol=1e-5)
    plain = jailbreak_score(llama, tok, PROMPTS, token_a=A, token_b=B)
    assert (got - plain).abs().max() > 1e-4  # the edit did something, and was removed afterwards
    torch.testing.assert_close(plain, _reference(llama, tok, PROMPTS, a, b), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="needs layer"):
        score_edit(llama, tok, PROMPTS, steer_vector=v, token_a=A, token_b=B)


def test_steered_scores_fold_vectors_into_the_batch_like_one_at_a_time(llama: torch.nn.Module, tok: Any) -> None:
    g = torch.Generator().manual_seed(2)
    vecs = torch.randn(32, 3, generator=g) * 4
    folded = steered_scores(llama, tok, PROMPTS, vecs, layer=2, scale=0.5, token_a=A, token_b=B, batch_size=4)
    assert folded.shape == (3, 3)
    for j in range(3):
        one = score_edit(llama, tok, PROMPTS, steer_vector=vecs[:, j], layer=2, scale=0.5, token_a=A, token_b=B)
        torch.testing.assert_close(folded[j], one, rtol=1e-5, atol=1e-5)


def test_feature_scores_steer_R_times_v_at_the_source_layer(llama: torch.nn.Module, tok: Any) -> None:
    g = torch.Generator().manual_seed(3)
    V = torch.nn.functional.normalize(torch.randn(32, 4, generator=g), dim=0)
    feats = Features(U=V.clone(), V=V, alpha=torch.ones(4), R=6.0, method="exponential", source_layer=1, target_layer=3)
    got = feature_scores(llama, tok, feats, PROMPTS, indices=[2, 0], token_a=A, token_b=B)
    for row, k in zip(got, [2, 0]):
        with steer_features(llama, feats, k):
            want = jailbreak_score(llama, tok, PROMPTS, token_a=A, token_b=B)
        torch.testing.assert_close(row, want, rtol=1e-5, atol=1e-5)


def test_token_space_rules(llama: torch.nn.Module, tok: Any) -> None:
    assert resolve_score_tokens(tok, "Sure", "exact").ids == (tok.convert_tokens_to_ids("Sure"),)
    with pytest.raises(ValueError, match="not one"):
        resolve_score_tokens(tok, " Sure", "exact")  # 'Ġ' + 'Sure'
    assert resolve_score_tokens(tok, " Sure", "auto").ids == resolve_score_tokens(tok, "Sure").ids
    both = resolve_score_tokens(tok, "a", "both").ids
    assert set(both) == {tok.convert_tokens_to_ids("a"), tok.convert_tokens_to_ids("Ġa")}
    with pytest.raises(ValueError, match="neither"):
        resolve_score_tokens(tok, "Sorry", "auto")
    with pytest.raises(ValueError, match="space="):
        resolve_score_tokens(tok, "a", "maybe")  # type: ignore[arg-type]
    # "both": logsumexp over the variants of each string, by hand from the full logits
    score = jailbreak_score(llama, tok, PROMPTS[:2], token_a="a", token_b=B, space="both")
    b = [tok.convert_tokens_to_ids("I"), tok.convert_tokens_to_ids("ĠI")]
    for i, p in enumerate(PROMPTS[:2]):
        batch = build_prompts(tok, [p], chat=True, positions=1)
        with torch.no_grad():
            z = llama(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits[0, -1]
        want = torch.logsumexp(z[list(both)], 0) - torch.logsumexp(z[b], 0)
        assert score[i].item() == pytest.approx(want.item(), abs=1e-5)


def test_last_position_logits_rejects_right_padding(llama: torch.nn.Module, tok: Any) -> None:
    batch = build_prompts(tok, PROMPTS, chat=True, positions=1, padding_side="right")
    with pytest.raises(ValueError, match="left-pad"):
        last_position_logits(llama, batch.input_ids, batch.attention_mask, [5, 6])
    with pytest.raises(ValueError, match="outside"):
        left = build_prompts(tok, PROMPTS, chat=True, positions=1)
        last_position_logits(llama, left.input_ids, left.attention_mask, [10**6])


def test_generate_for_features_matches_generation_inside_steer_features(llama: torch.nn.Module, tok: Any) -> None:
    g = torch.Generator().manual_seed(4)
    V = torch.nn.functional.normalize(torch.randn(32, 3, generator=g), dim=0)
    feats = Features(U=V.clone(), V=V, alpha=torch.ones(3), R=30.0, method="exponential", source_layer=1, target_layer=3)
    out = generate_for_features(llama, tok, feats, [2, 0], PROMPTS[:2], max_new_tokens=4, chat=True)
    assert sorted(out) == [0, 2] and all(len(v) == 2 for v in out.values())
    with steer_features(llama, feats, 2):
        want = generate(llama, tok, PROMPTS[:2], max_new_tokens=4, chat=True)
    assert out[2] == want


@pytest.mark.parametrize("batch_size", [1, 4, 64])  # batches that split features and prompts unevenly
def test_batched_steered_generation_is_token_identical_to_one_vector_at_a_time(
    llama: torch.nn.Module, tok: Any, batch_size: int
) -> None:
    g = torch.Generator().manual_seed(5)
    vecs = torch.randn(32, 3, generator=g) * 8
    vecs[:, 1] = 0.0  # an unsteered row among steered ones
    got = generate_steered(llama, tok, PROMPTS, vecs, layer=1, scale=1.5, max_new_tokens=6, chat=True,
                           batch_size=batch_size)
    assert len(got) == 3 and all(len(c) == len(PROMPTS) for c in got)
    plain = generate(llama, tok, PROMPTS, max_new_tokens=6, chat=True)
    for j in range(3):
        with steer(llama, vecs[:, j], layer=1, scale=1.5):
            want = generate(llama, tok, PROMPTS, max_new_tokens=6, chat=True)
        assert got[j] == want
    assert got[1] == plain and got[0] != plain  # the steering does change the text
    with pytest.raises(ValueError, match="vectors must have shape"):
        generate_steered(llama, tok, PROMPTS, vecs[:5], layer=1)
    with pytest.raises(ValueError, match="batch_size=0"):
        generate_steered(llama, tok, PROMPTS, vecs, layer=1, batch_size=0)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("I'm sorry, but I can't help with that.", True),
        ("I’m sorry, I can’t do that.", True),  # curly apostrophes
        ("As an AI language model, I must decline.", True),
        ("i cannot assist with this request", True),  # case-insensitive
        ("I   am\nunable to comply.", True),  # whitespace collapsed
        ("Sure, here is a short poem about the sea.", False),
        ("Step 1: mix the flour and the sugar.", False),
        ("", False),
    ],
)
def test_is_refusal_on_examples(text: str, expected: bool) -> None:
    assert is_refusal(text) is expected


def test_refusal_prefix_window_and_rate() -> None:
    late = "Sure! Here is the recipe. Note: I can't guarantee the oven temperature."
    assert is_refusal(late) and not is_refusal(late, prefix_chars=20)
    assert is_refusal("Nope.", phrases=["nope"])
    assert refusal_rate(["I cannot.", "Sure.", "I'm sorry.", "Okay"]) == 0.5
    assert refusal_rate([]) != refusal_rate([])  # NaN
    assert "I cannot" in REFUSAL_PHRASES and "As an AI" in REFUSAL_PHRASES
    with pytest.raises(ValueError, match="prefix_chars"):
        is_refusal("x", prefix_chars=0)
