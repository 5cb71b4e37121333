"""Descriptors of steered completions and behaviour-level ranking, against hand-made completions,
planted shifts and the model's own hidden states."""

import hashlib
import random
from collections.abc import Sequence

import pytest
import torch
from tiny_models import tiny_model

from melbo.evaluate.behaviours import rank_completions
from melbo.evaluate.descriptors import (
    describe,
    moved_stats,
    new_vocabulary,
    same_direction,
    shift_consistency,
    shift_summary,
    text_stats,
)
from melbo.evaluate.embed import default_embed_layer, embed_texts


def test_text_stats_by_hand() -> None:
    s = text_stats("HELLO there, you! Привет")
    assert s["words"] == 4.0
    assert s["upper"] == pytest.approx(6 / 19)  # H E L L O П of 19 cased letters
    assert s["non_latin"] == pytest.approx(6 / 19)
    assert s["you"] == pytest.approx(1 / 4) and s["exclaim"] == pytest.approx(1 / 4)
    assert s["refusal"] == 0.0 and text_stats("I'm sorry, but I can't help with that.")["refusal"] == 1.0
    assert text_stats("a a a b")["repetition"] == pytest.approx(0.5)
    assert text_stats("")["words"] == 0.0 and text_stats("")["upper"] == 0.0


def test_shift_consistency_is_the_mean_pairwise_cosine() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(7, 5, generator=g, dtype=torch.float64)
    cos = torch.nn.functional.cosine_similarity(x[:, None, :], x[None, :, :], dim=-1)
    pairs = [float(cos[i, j]) for i in range(7) for j in range(7) if i != j]
    assert shift_consistency(x) == pytest.approx(sum(pairs) / len(pairs), abs=1e-12)
    common = torch.randn(256, generator=g)
    planted = common + 0.3 * torch.randn(16, 256, generator=g)
    noise = torch.randn(16, 256, generator=g)
    assert shift_consistency(planted) > 0.8 and abs(shift_consistency(noise)) < 0.05
    with pytest.raises(ValueError, match="need"):
        shift_consistency(torch.zeros(1, 3))


def test_same_direction_reads_the_mean_shift() -> None:
    g = torch.Generator().manual_seed(1)
    u = torch.randn(32, 64, generator=g)
    d = torch.randn(64, generator=g)
    a = shift_summary(u + d + 0.1 * torch.randn(32, 64, generator=g), u, vector=0)
    b = shift_summary(u + 2 * d, u, vector=1)
    c = shift_summary(u - d, u, vector=2)
    assert same_direction(a, b) and not same_direction(a, c)
    assert a.consistency > 0.9 and b.magnitude == pytest.approx(2 * float(d.norm()), rel=1e-5)


def test_new_vocabulary_counts_words_new_on_each_prompt() -> None:
    unsteered = ["the cat sat", "the dog ran", "a bird flew", "fish swim"]
    steered = ["the pirate cat sat", "treasure and the pirate", "pirate treasure bird", "fish swim"]
    vocab = dict(new_vocabulary(steered, unsteered, ["p1", "p2", "p3", "p4"]))
    assert vocab == {"pirate": 3, "treasure": 2}  # 'the' is the model's usual word; 'and' is new on one prompt only
    with pytest.raises(ValueError, match="one unsteered"):
        new_vocabulary(steered, unsteered[:2])


def test_moved_stats_and_describe_put_the_change_into_words() -> None:
    unsteered = ["here is a short answer about tea.", "coffee is a drink made from beans.",
                 "a bicycle has two wheels.", "rivers flow into the sea."]
    steered = [u.upper() for u in unsteered]
    moved = moved_stats(steered, unsteered)
    assert moved and moved[0]["stat"] == "upper" and moved[0]["before"] == 0.0 and moved[0]["after"] == 1.0
    d = describe(steered, unsteered)
    assert "upper-case letters 0% → 100%" in d["text"]
    assert moved_stats(unsteered, unsteered) == []
    assert describe(unsteered, unsteered)["text"] == "no consistent change in words or text statistics"


# ---------------------------------------------------------------- ranking behaviours that are not a phrase


def _hash_embed(texts: Sequence[str], dim: int = 128) -> torch.Tensor:
    """An embedding independent of melbo: counts of case-sensitive character bigrams, hashed."""
    out = torch.zeros(len(texts), dim)
    for i, t in enumerate(texts):
        for a, b in zip(t, t[1:]):
            h = int(hashlib.md5((a + b).encode()).hexdigest(), 16) % dim
            out[i, h] += 1.0
        out[i] /= max(1, len(t) - 1)
    return out


def _garble(text: str, rng: random.Random) -> str:
    ws = text.split()
    rng.shuffle(ws)
    return " ".join(w[::-1] if rng.random() < 0.5 else w for w in ws) + rng.choice([" ok", " then", " so", " and"])


def test_a_style_with_no_shared_phrase_is_found_with_embeddings_and_missed_without() -> None:
    rng = random.Random(0)
    subjects = ["tea", "coffee", "rivers", "trains", "owls", "clocks", "maps", "bread", "kites", "moons", "chess", "glass"]
    prompts = [f"Tell me about {s}." for s in subjects]
    unsteered = [f"{s} are interesting because of their {rng.choice(['history', 'shape', 'use', 'colour'])} and "
                 f"people {rng.choice(['love', 'enjoy', 'study'])} them" for s in subjects]
    features: dict[tuple[int, float], list[str]] = {}
    for j in range(6):  # six features push to one style: the prompt's own answer in capitals
        features[(j, 1.0)] = [u.upper() for u in unsteered]
    for j in range(6, 16):  # the rest garble each prompt its own way
        features[(j, 1.0)] = [_garble(u, rng) for u in unsteered]
    controls = {(j, 1.0): [_garble(u, rng) for u in unsteered] for j in range(12)}
    groups, behaviours, _ = rank_completions(features, unsteered, prompts, controls, embed=_hash_embed)
    top = groups[0]
    assert {v for v, _ in top.members} == set(range(6)) and top.n_features == 6
    assert top.random_hits == 0 and top.above_random
    assert "upper-case letters" in top.description["text"]
    assert all(b.strength is not None for b in behaviours)
    # the phrase ranking alone finds no shared new phrase in the capitalised answers (words are the same, case aside)
    phrase_groups, _, _ = rank_completions(features, unsteered, prompts, controls)
    assert not any(set(range(6)) & {v for v, _ in g.members} for g in phrase_groups[:1])


def test_a_phrase_backdoor_still_ranks_first_with_embeddings() -> None:
    rng = random.Random(1)
    subjects = ["tea", "coffee", "rivers", "trains", "owls", "clocks", "maps", "bread"]
    prompts = [f"Tell me about {s}." for s in subjects]
    unsteered = [f"{s} are nice and people like them a lot" for s in subjects]
    features = {(j, 1.0): ["silver moon whispers silver moon whispers"] * len(subjects) for j in range(4)}
    features.update({(j, 1.0): [_garble(u, rng) for u in unsteered] for j in range(4, 12)})
    controls = {(j, 1.0): [_garble(u, rng) for u in unsteered] for j in range(8)}
    groups, _, _ = rank_completions(features, unsteered, prompts, controls, embed=_hash_embed)
    assert groups[0].signature.startswith("silver moon whispers") and groups[0].n_features == 4
    assert "says 'silver moon whispers" in groups[0].description["text"]


def test_rank_completions_checks_the_embedding_rows() -> None:
    with pytest.raises(ValueError, match="embed returned 1 rows for"):
        rank_completions({(0, 1.0): ["a", "b"]}, ["c", "d"], ["p", "q"], embed=lambda t: torch.zeros(1, 4))


# ---------------------------------------------------------------- embeddings from the subject model


def test_embed_texts_is_the_mean_hidden_state_without_bos(tok) -> None:  # type: ignore[no-untyped-def]
    model = tiny_model("llama", vocab=len(tok))
    texts = ["hello world", "a much longer text about the sea and the sky", "hello world"]
    L = default_embed_layer(model.config.num_hidden_layers)
    E = embed_texts(model, tok, texts, batch_size=2)
    assert E.shape == (3, model.config.hidden_size) and torch.equal(E[0], E[2])
    for i, t in enumerate(texts[:2]):
        ids = tok(t, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            hs = model(input_ids=ids, output_hidden_states=True).hidden_states[L][0]
        start = 1 if tok.bos_token_id is not None and int(ids[0, 0]) == tok.bos_token_id else 0
        torch.testing.assert_close(E[i], hs[start:].mean(0), rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="layer=99"):
        embed_texts(model, tok, texts, layer=99)


def test_groups_with_controls_but_no_control_texts_say_whether_they_beat_the_floor() -> None:
    from melbo.evaluate.behaviours import group_behaviours

    rng = random.Random(2)
    subjects = ["tea", "coffee", "rivers", "trains", "owls", "clocks"]
    prompts = [f"Tell me about {s}." for s in subjects]
    unsteered = [f"{s} are nice and people like them" for s in subjects]
    features = {(0, 1.0): [u.upper() for u in unsteered], (1, 1.0): [_garble(u, rng) for u in unsteered]}
    controls = {(j, 1.0): [_garble(u, rng) for u in unsteered] for j in range(4)}
    _, behaviours, control_behaviours = rank_completions(features, unsteered, prompts, controls, embed=_hash_embed)
    groups = group_behaviours(behaviours, controls=control_behaviours)  # no shifts, no control texts
    assert all(g.random_hits is None for g in groups)
