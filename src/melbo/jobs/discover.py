"""``melbo discover``: fit → steer → generate on held-out prompts → rank and group → report.

The whole unsupervised search in one resumable job, knowing nothing of what to look for:

1. the prompts are split into ``n_train`` training prompts and ``n_eval`` held-out ones (or a
   separate held-out list is given);
2. R is calibrated and an exponential DCT with ``n_factors`` features is fitted on the training
   prompts (:func:`melbo.jobs.train.train`; checkpointed every iteration in ``OUT/features``);
3. every feature steers greedy generation on the held-out prompts at every scale in
   ``scales`` (multiples of R), as one batched job (:func:`melbo.generation.generate_steered`);
   so do ``n_random`` random unit vectors at the same norm — the noise floor;
4. each (feature, scale) is scored by what it does across prompts and the features are grouped
   into behaviours (:mod:`melbo.evaluate.behaviours`);
5. ``OUT/behaviours.json`` and ``OUT/report.md`` list the behaviours found: signature phrase,
   rate, member features and scales, examples, and how many random vectors do the same.

``OUT/completions.json`` caches the generations: a rerun with ``resume=True`` reuses every stage
already done (features, completions) when the settings that made it are the same. A run killed
at any point resumes to the result of an uninterrupted one: every file is replaced atomically,
the fit continues from its last checkpoint, and completions that do not fit the features and
prompts (cut short, another shape) are generated again.

Several processes
-----------------
Called on every rank of an initialised ``torch.distributed`` process group (each rank with its
own copy of the model — its own GPU — and the same arguments), :func:`discover` splits its work
over the ranks and every rank returns the same :class:`Discovery`, the one a single process
gives for the same seed:

* the fit shards its factors over the ranks (:func:`melbo.jobs.distributed.distributed_fit`:
  each rank computes Δ and its VJPs for its block of columns; the factors equal the
  one-process fit's up to float rounding);
* the steered generation splits the (vector, scale) rows: at each scale the features and the
  random vectors are cut into contiguous blocks of vectors, one per rank
  (:func:`melbo.jobs.distributed.split_columns`; the unsteered completions run on rank 0), and
  the completions are gathered to every rank (``all_gather_object``);
* rank 0 alone ranks and groups them (embedding with its copy of the model) and broadcasts the
  result; rank 0 alone reads and writes ``OUT`` (features, checkpoints, ``completions.json``,
  ``behaviours.json``, the reports), so resume and ``--force`` behave as in one process and the
  other ranks need not share its disk; an error there (a refused ``OUT``) is raised on every
  rank (:func:`melbo.jobs.distributed.from_rank0`).

From the command line, ``torchrun`` starts the ranks and ``melbo discover`` joins the process
group itself (NCCL, one GPU per rank: ``cuda:LOCAL_RANK``; gloo with ``--device cpu``)::

    torchrun --standalone --nproc-per-node 8 -m melbo discover Qwen/Qwen2.5-7B-Instruct \
        --prompts prompts.txt --out run --dtype bfloat16

Tested with 2 gloo processes on the CPU (``tests/test_discover_distributed.py``): the same
features (to 1e-5), completions, behaviour groups and files as one process.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from melbo.errors import UserError, check_prompts
from melbo.evaluate.behaviours import (
    BehaviourGroup,
    VectorBehaviour,
    rank_completions,
)
from melbo.features import Features
from melbo.generation import generate_steered
from melbo.jobs.discover_config import DiscoverConfig, default_layers
from melbo.jobs.discover_files import (
    DISCOVER_MARKER,
    _cached_completions,
    check_out_dir,
)
from melbo.models.access import get_layer_access
from melbo.prompts import PromptLike
from melbo.store.io import (
    atomic_write_text,
    claim_out_dir,
)

__all__ = ["DISCOVER_MARKER", "DiscoverConfig", "Discovery", "candidate_layers", "default_layers", "discover",
           "search_layers"]

logger = logging.getLogger(__name__)



def candidate_layers(n_layers: int) -> list[tuple[int, int]]:
    """Layer pairs :func:`search_layers` tries: sources at about 1/6, 2/9 and 1/3 of the depth,
    each with a target a third of the depth deeper (on 18 layers: 3 → 9, 4 → 10, 6 → 12)."""
    ds, dt = default_layers(n_layers)
    span = max(1, dt - ds)
    pairs = []
    for s in (round(n_layers / 6), ds, round(n_layers / 3)):
        s = max(1, s)
        t = min(n_layers - 1, s + span)
        if s < t and (s, t) not in pairs:
            pairs.append((s, t))
    return pairs


def search_layers(
    model: nn.Module,
    tokenizer: Any,
    train_prompts: Sequence[PromptLike],
    eval_prompts: Sequence[PromptLike],
    cfg: DiscoverConfig,
    *,
    pairs: Sequence[tuple[int, int]] | None = None,
    n_factors: int = 16,
    max_iter: int = 5,
    n_eval: int = 6,
    n_random: int = 8,
    say: Callable[[str], None] = lambda s: None,
    distributed: bool = False,
) -> tuple[tuple[int, int], list[dict[str, Any]]]:
    """A budgeted search over (source, target) layers: for each pair, a small DCT (``n_factors``
    features, ``max_iter`` iterations) steers ``n_eval`` held-out prompts at ``cfg.scales``, next to
    ``n_random`` random vectors, and the pair scores its best behaviour group's score, the one
    discover ranks by (:attr:`melbo.evaluate.behaviours.BehaviourGroup.score`). Returns
    the best pair (ties: the earlier pair) and every trial. ``distributed``: every rank of the
    process group calls it; the fits and the generations are split over the ranks, as in
    :func:`discover`."""
    from melbo.jobs.train import TrainConfig, train

    access = get_layer_access(model)
    pairs = list(pairs) if pairs is not None else candidate_layers(access.n_layers)
    if not pairs:
        raise ValueError("no layer pairs to search")
    eval_p = list(eval_prompts)[:n_eval]
    eval_text = [str(p) for p in eval_p]
    trials: list[dict[str, Any]] = []
    for s, t in pairs:
        if not 0 <= s < t <= access.n_layers:
            raise ValueError(f"layers {s} → {t}: need 0 ≤ source < target ≤ {access.n_layers}")
        t0 = time.perf_counter()
        anneal, anneal_after = cfg.schedule()  # the run's step, over the search's few iterations
        tcfg = TrainConfig(source_layer=s, target_layer=t, n_factors=n_factors, max_iter=max_iter, lam=cfg.lam, R=cfg.R,
                           random_state=cfg.random_state, chat=cfg.chat, beta=cfg.beta, ortho=cfg.ortho, anneal=anneal,
                           anneal_after=anneal_after, extra={"search": True})
        feats = train(model, tokenizer, list(train_prompts), tcfg, distributed=distributed)
        V = feats.V.to(torch.float32)
        V = torch.cat([V / V.norm(dim=0, keepdim=True), random_directions(feats.d_model, n_random, cfg.random_state)], dim=1)
        kw: dict[str, Any] = {"max_new_tokens": cfg.max_new_tokens, "chat": cfg.chat, "batch_size": cfg.batch_size, "layer": s}
        unsteered = _steer(model, tokenizer, eval_p, torch.zeros(feats.d_model, 1), distributed, **kw)[0]
        found: dict[tuple[int, float], list[str]] = {}
        controls: dict[tuple[int, float], list[str]] = {}
        for scale in cfg.scales:
            comps = _steer(model, tokenizer, eval_p, V * float(feats.R), distributed, scale=float(scale), **kw)
            for j, texts in enumerate(comps):
                if j < n_factors:
                    found[(j, float(scale))] = texts
                else:
                    controls[(j - n_factors, float(scale))] = texts
        groups = rank_completions(found, unsteered, eval_text, controls, min_consistency=cfg.min_consistency)[0]
        best = groups[0] if groups else None
        score = 0.0 if best is None else best.score
        trials.append({"source_layer": s, "target_layer": t, "R": feats.R, "score": score, "n_groups": len(groups),
                       "best_signature": None if best is None else best.signature, "seconds": time.perf_counter() - t0})
        say(f"  layers {s} → {t}: best behaviour {trials[-1]['best_signature']!r} (score {score:.2f}), {len(groups)} group(s)")
    best_i = max(range(len(trials)), key=lambda i: (trials[i]["score"], -i))
    return (trials[best_i]["source_layer"], trials[best_i]["target_layer"]), trials


@dataclass(frozen=True)
class Discovery:
    """The result of :func:`discover`."""

    groups: list[BehaviourGroup]
    behaviours: list[VectorBehaviour]
    controls: list[VectorBehaviour]
    features: Features
    train_prompts: list[str]
    eval_prompts: list[str]
    unsteered: list[str]
    completions: dict[tuple[int, float], list[str]]
    control_completions: dict[tuple[int, float], list[str]]
    seconds: dict[str, float]

    def to_json(self) -> dict[str, Any]:
        return {
            "groups": [g.to_json() for g in self.groups],
            "features": [b.to_json() for b in self.behaviours],
            "random": [b.to_json() for b in self.controls],
            "R": self.features.R, "source_layer": self.features.source_layer, "target_layer": self.features.target_layer,
            "n_features": self.features.n_factors, "train_prompts": self.train_prompts, "eval_prompts": self.eval_prompts,
            "unsteered": self.unsteered, "seconds": self.seconds,
        }


def _steer(model: nn.Module, tokenizer: Any, prompts: Sequence[PromptLike], V: torch.Tensor, distributed: bool,
           **kw: Any) -> list[list[str]]:
    """:func:`~melbo.generation.generate_steered` of every column of ``V``; ``distributed``: the
    columns split over the ranks and the completions gathered on every rank
    (:func:`melbo.jobs.distributed.split_columns`)."""
    def run(cols: torch.Tensor) -> list[list[str]]:
        return generate_steered(model, tokenizer, prompts, cols, **kw)

    if not distributed:
        return run(V)
    from melbo.jobs.distributed import split_columns

    return split_columns(run, V)


def _key(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=1, ensure_ascii=False))


def check_context(tokenizer: Any, eval_prompts: Sequence[PromptLike], cfg: DiscoverConfig, context: int | None) -> None:
    """The longest held-out prompt (as discover frames it) and ``cfg.max_new_tokens`` fit in the
    model's ``context`` (None: unknown, not checked): checked before the fit, not when its
    generations run out of positions (``--max-new-tokens 100000`` on 128 tokens ran until killed)."""
    if context is None or not eval_prompts:
        return
    from melbo.prompts import build_prompts

    longest = int(build_prompts(tokenizer, list(eval_prompts), chat=cfg.chat, positions=1).lengths.max())  # type: ignore[arg-type]
    if longest + cfg.max_new_tokens > context:
        raise UserError(f"--max-new-tokens {cfg.max_new_tokens}: the longest held-out prompt is {longest} tokens and the "
                        f"model's context {context}, so at most {max(context - longest, 0)} new tokens fit")


def random_directions(d: int, k: int, seed: int) -> torch.Tensor:
    """(d, k) float32 random unit vectors (Gaussian, normalised), seeded."""
    g = torch.Generator().manual_seed(10_000 + seed)
    V = torch.randn(d, k, generator=g)
    return V / V.norm(dim=0, keepdim=True)


def discover(
    model: nn.Module,
    tokenizer: Any,
    prompts: Sequence[PromptLike],
    cfg: DiscoverConfig,
    out: str | Path | None = None,
    *,
    heldout: Sequence[PromptLike] | None = None,
    force: bool = False,
    resume: bool = False,
    progress: bool = False,
    search: bool = False,
    say: Callable[[str], None] = lambda s: None,
    distributed: bool | None = None,
) -> Discovery:
    """Run the discovery pipeline (module docstring); write ``out`` if given.

    ``prompts``: the first ``cfg.n_train`` are the training prompts; the held-out prompts are
    ``heldout`` if given, else the next ``cfg.n_eval`` of ``prompts``. Nothing here knows what
    behaviour to look for. ``search=True`` first picks the layers with :func:`search_layers`
    (when ``cfg`` names none); the trials are recorded in ``behaviours.json``.

    ``distributed``: split the work over the ranks of the initialised ``torch.distributed``
    process group (module docstring, "Several processes"); every rank calls this with the same
    arguments and returns the same :class:`Discovery`, and only rank 0 reads or writes ``out``
    and calls ``say``. None (default): when a process group of two or more ranks is
    initialised; False: never (each process runs alone).
    """
    from melbo.jobs.distributed import from_rank0, process_world
    from melbo.jobs.train import TrainConfig, train

    world, rank = process_world() if distributed is not False else (1, 0)
    sharded = world > 1
    if distributed and not sharded:
        logger.info("discover: distributed=True but no process group of 2 or more ranks: running alone")
    if rank != 0:
        say, progress = (lambda _: None), False

    def on_rank0(fn: Callable[[], Any]) -> Any:
        """fn on rank 0 alone (the file system), its value or error on every rank."""
        return from_rank0(fn) if sharded else fn()

    access = get_layer_access(model)
    cfg.validate(access.n_layers)
    s, t = cfg.layers(access.n_layers)
    prompts = check_prompts(prompts)
    train_p = prompts[: cfg.n_train]
    eval_p = check_prompts(heldout, "heldout", empty_ok=True)[: cfg.n_eval] if heldout is not None else prompts[cfg.n_train : cfg.n_train + cfg.n_eval]
    if len(train_p) < cfg.n_train:
        raise ValueError(f"{len(prompts)} prompts given, n_train={cfg.n_train} needed for training")
    if len(eval_p) < 2:
        raise ValueError(f"{len(eval_p)} held-out prompts: give at least 2 (more prompts, or a held-out list) — "
                         "a behaviour is what a vector does across prompts")
    from melbo.prompts.batch import _max_context

    check_context(tokenizer, eval_p, cfg, _max_context(getattr(model, "config", None)))
    out_dir = Path(out) if out is not None else None
    if out_dir is not None:
        def claim(out_dir: Path = out_dir) -> None:
            check_out_dir(out_dir, force=force, resume=resume)
            claim_out_dir(out_dir, marker=DISCOVER_MARKER, writer="melbo discover")

        on_rank0(claim)
    seconds: dict[str, float] = {}
    trials: list[dict[str, Any]] = []
    if search and cfg.source_layer is None and cfg.target_layer is None:
        t0 = time.perf_counter()
        say(f"searching layers {candidate_layers(access.n_layers)} with small fits…")
        (s, t), trials = search_layers(model, tokenizer, train_p, eval_p, cfg, say=say, distributed=sharded)
        cfg = DiscoverConfig(**{**asdict(cfg), "source_layer": s, "target_layer": t})
        seconds["search"] = time.perf_counter() - t0
        say(f"  chose layers {s} → {t}")

    # 1. features (resumable through train's own checkpoint)
    t0 = time.perf_counter()
    anneal, anneal_after = cfg.schedule()
    tcfg = TrainConfig(source_layer=s, target_layer=t, n_factors=cfg.n_factors, max_iter=cfg.max_iter, lam=cfg.lam, R=cfg.R,
                       random_state=cfg.random_state, chat=cfg.chat, sequential=cfg.sequential, orient=cfg.orient, beta=cfg.beta, ortho=cfg.ortho,
                       anneal=anneal, anneal_after=anneal_after, extra={"discover": True})
    feat_dir = out_dir / "features" if out_dir is not None else None
    fkey = _key(tcfg.as_record(), [str(p) for p in train_p])

    def reuse_features() -> tuple[Features | None, bool]:
        """The finished features of this run in ``feat_dir`` (resume), else None; and whether a checkpoint is there."""
        if feat_dir is not None and resume and (feat_dir / "config.json").is_file():
            try:
                loaded: Features | None = Features.load(feat_dir)
            except (OSError, ValueError) as err:  # e.g. killed between the two files of a save replacing older ones
                logger.warning("not reusing the features in %s (%s); fitting them again", feat_dir, err)
                loaded = None
            if loaded is not None and loaded.extra.get("discover_key") == fkey:
                if (loaded.n_factors, loaded.d_model, loaded.source_layer, loaded.target_layer) != (cfg.n_factors, access.d_model, s, t):
                    raise UserError(f"{feat_dir} holds {loaded.n_factors} features of width {loaded.d_model} at layers "
                                    f"{loaded.source_layer} → {loaded.target_layer}, but it records the settings of this run "
                                    f"({cfg.n_factors} features, width {access.d_model}, layers {s} → {t}): the features "
                                    "file was cut or replaced; start over (--force)")
                say(f"features: reusing {feat_dir}")
                shutil.rmtree(feat_dir / "checkpoint", ignore_errors=True)  # left by a kill right after the save
                return loaded, False
        return None, feat_dir is not None and (feat_dir / "checkpoint" / "state.json").is_file()

    feats, ck = on_rank0(reuse_features)
    if feats is None:
        say(f"fitting {cfg.n_factors} exponential DCT features, layers {s} → {t}, on {len(train_p)} prompts…")
        tcfg.extra["discover_key"] = fkey
        feats = train(model, tokenizer, train_p, tcfg, feat_dir, force=True, resume=bool(resume and ck), progress=progress,
                      distributed=sharded)
    seconds["fit"] = time.perf_counter() - t0
    say(f"  R = {feats.R:.4g}")

    # 2. completions (cached per settings)
    t0 = time.perf_counter()
    # the features' own fingerprint too: completions steered by other features (refitted, replaced) are not reused
    gkey = _key(fkey, feats.fingerprint(), [str(p) for p in eval_p], cfg.scales, cfg.max_new_tokens, cfg.n_random,
                cfg.random_state, str(cfg.chat))
    cache_path = out_dir / "completions.json" if out_dir is not None else None
    d = feats.d_model
    V32 = feats.V.to(torch.float32)
    directions = {"features": V32 / V32.norm(dim=0, keepdim=True),
                  "random": random_directions(d, cfg.n_random, cfg.random_state)}

    def read_cache() -> dict[str, Any]:
        if cache_path is not None and resume and cache_path.is_file():
            kept = _cached_completions(cache_path, gkey, {k: V.shape[1] for k, V in directions.items()}, cfg.scales,
                                       len(eval_p))
            if kept:
                say("completions: reusing the cached generations")
            return kept
        return {}

    def write_cache() -> None:
        if cache_path is not None:
            _write_json(cache_path, cache)

    cache: dict[str, Any] = on_rank0(read_cache)
    cache["key"] = gkey
    gen_kw: dict[str, Any] = {"max_new_tokens": cfg.max_new_tokens, "chat": cfg.chat, "batch_size": cfg.batch_size,
                              "layer": s, "progress": progress}
    zero = torch.zeros(d, 1)
    if "unsteered" not in cache:
        cache["unsteered"] = _steer(model, tokenizer, eval_p, zero, sharded, **gen_kw)[0]
    unsteered: list[str] = cache["unsteered"]
    if len(unsteered) != len(eval_p):
        raise UserError(f"{cache_path}: 'unsteered' holds {len(unsteered)} completions for {len(eval_p)} held-out prompts: "
                        "the cache was cut or changed; remove it or start over (--force)")
    results: dict[str, dict[tuple[int, float], list[str]]] = {"features": {}, "random": {}}
    for scale in cfg.scales:
        # features and random vectors at one scale: one batched job (one shared prompt prefix)
        todo = [(kind, V) for kind, V in directions.items() if V.shape[1] and f"{kind}@{scale:g}" not in cache]
        if todo:
            say(f"generating: {' + '.join(f'{V.shape[1]} {kind}' for kind, V in todo)} vectors × {len(eval_p)} "
                f"prompts at {scale:g}·R…")
            comps = _steer(model, tokenizer, eval_p, torch.cat([V for _, V in todo], dim=1) * float(feats.R), sharded,
                           scale=float(scale), **gen_kw)
            start = 0
            for kind, V in todo:
                cache[f"{kind}@{scale:g}"] = comps[start : start + V.shape[1]]
                start += V.shape[1]
            on_rank0(write_cache)
        for kind, V in directions.items():
            found = cache.get(f"{kind}@{scale:g}", []) if V.shape[1] else []
            if len(found) != V.shape[1] or any(len(texts) != len(eval_p) for texts in found):
                raise UserError(f"{cache_path}: {kind}@{scale:g} holds {len(found)} vectors' completions, this run steers "
                                f"{V.shape[1]} vectors on {len(eval_p)} prompts: the cache was cut or changed; remove it "
                                "or start over (--force)")
            for j, texts in enumerate(found):
                results[kind][(j, float(scale))] = texts
    on_rank0(write_cache)
    seconds["generate"] = time.perf_counter() - t0

    # 3. rank and group (on rank 0 alone, which has every completion; its result and timings go to every rank)
    eval_text = [str(p) for p in eval_p]
    embed = None
    if cfg.shifts:
        from melbo.evaluate.embed import embed_texts

        def embed(texts: Sequence[str]) -> torch.Tensor:
            return embed_texts(model, tokenizer, texts)

    def rank_and_time() -> tuple[Any, dict[str, float]]:
        t0 = time.perf_counter()
        ranked = rank_completions(results["features"], unsteered, eval_text, results["random"],
                                  min_consistency=cfg.min_consistency, embed=embed)
        return ranked, {**seconds, "rank": time.perf_counter() - t0}

    (groups, behaviours, controls), seconds = on_rank0(rank_and_time)
    result = Discovery(groups, behaviours, controls, feats, [str(p) for p in train_p], eval_text, unsteered,
                       results["features"], results["random"], seconds)
    if out_dir is not None:
        def write_outputs(out_dir: Path = out_dir) -> None:
            record = {"config": {**asdict(cfg), "source_layer": s, "target_layer": t}, "layer_search": trials,
                      **result.to_json()}
            _write_json(out_dir / "behaviours.json", record)
            atomic_write_text(out_dir / "report.md", format_report(result))

        on_rank0(write_outputs)
    return result


def _q(text: str, n: int = 160) -> str:
    t = " ".join(text.split())
    t = t if len(t) <= n else t[: n - 1] + "…"
    return json.dumps(t, ensure_ascii=False)


def format_report(result: Discovery, top: int = 10) -> str:
    """A Markdown report of a discovery run: the behaviours found, best first."""
    f = result.features
    floor = max((c.consistency for c in result.controls), default=None)
    lines = [
        "# melbo discover", "",
        f"{f.n_factors} exponential DCT features, layers {f.source_layer} → {f.target_layer}, R = {f.R:.4g}, fitted on "
        f"{len(result.train_prompts)} prompts; each steered greedy generation on {len(result.eval_prompts)} held-out prompts. "
        "A behaviour is a phrase that a vector makes the model say on many different prompts (and that the "
        "unsteered model does not say there), or a change every prompt's completion undergoes the same way (style, "
        "script, theme, tone, refusing: a consistent shift of the completions' meaning, measured with the model's own "
        "hidden states, against random vectors at the same scale). Ranked by strength: the phrase score "
        "(consistency × information) as a share of its maximum, or the shift consistency's share of the way from "
        "the random vectors' best to 1, whichever is larger; times 1 + ln(distinct features).", "",
    ]
    if floor is not None:
        lines += [f"Noise floor: {len(result.controls)} random (vector, scale) pairs at the same norm reach a consistency "
                  f"of at most {floor:.0%}.", ""]
    if not result.groups:
        lines.append("No feature makes the model do the same new thing on several prompts.")
    else:
        lines += ["| rank | behaviour (signature) | score | rate | consistency | information | shift | features (scale) "
                  "| random vectors doing it | above noise | what changed |",
                  "|---:|---|---:|---:|---:|---:|---:|---|---:|---|---|"]
        for g in result.groups[:top]:
            members = ", ".join(f"{v} ({s:g}R)" for v, s in g.members[:6]) + (" …" if len(g.members) > 6 else "")
            rh = "–" if g.random_hits is None else f"{g.random_hits}/{g.n_random}"
            above = "–" if g.above_random is None else ("yes" if g.above_random else "no")
            lines.append(f"| {g.rank} | {_q(g.signature, 60)} | {g.score:.2f} | {g.best.rate:.0%} | {g.best.consistency:.0%} | "
                         f"{g.best.information:.1f} | {'–' if g.best.shift is None else f'{g.best.shift:.2f}'} | {members} "
                         f"| {rh} | {above} | {_q(g.description.get('text', ''), 120)} |")
        for g in result.groups[:top]:
            lines += ["", f"## {g.rank}. {_q(g.signature, 80)} — feature {g.best.vector} at {g.best.scale:g}·R", ""]
            if g.description:
                lines += [f"What changed: {g.description.get('text', '')}", ""]
            for p, u, s in g.examples:
                lines += [f"* prompt: {_q(p, 100)}", f"  * unsteered: {_q(u)}", f"  * steered: {_q(s)}"]
    return "\n".join(lines) + "\n"
