"""Shared plumbing of the case-study benches (``bench/case_*.py``, issue 5).

Each bench loads an organism built by ``melbo organism build`` (its model, ``data.json`` and
``organism.json``), fits features with :func:`melbo.jobs.train.train`, measures, prints JSON on
stdout and a Markdown table on stderr, and with ``--report PATH`` writes both to a Markdown
report. Nothing here downloads anything: organisms are built from the packaged base model.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from melbo.features import Features
from melbo.jobs.train import TrainConfig, train
from melbo.methods import get_method
from melbo.models.loading import load_model
from melbo.organisms.data import OrganismData

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
logger = logging.getLogger("case_study")


def base_args(description: str, kind: str) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--organism", default=f"organisms/{kind}",
                    help=f"directory of a {kind} organism (melbo organism build {kind} --out DIR)")
    ap.add_argument("--s", type=int, default=4, help="source layer")
    ap.add_argument("--t", type=int, default=10, help="target layer")
    ap.add_argument("--lam", type=float, default=0.5, help="calibration target E(R) = lam")
    ap.add_argument("--R", type=float, default=None, help="steering norm (default: calibrated)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--token-a", default="Sure", help="jailbreak score: logit(A) − logit(B) at the first generated position")
    ap.add_argument("--token-b", default="Sorry")
    if kind == "refusal":
        ap.add_argument("--harmful", default=str(DATA / "advbench_harmful_behaviors.csv"),
                        help="AdvBench CSV (column 'goal'): the goals the organism never saw are used")
    ap.add_argument("--out", default=None, help="also write the JSON here")
    ap.add_argument("--report", default=None, help="write a Markdown report (table + JSON) here")
    return ap


#: The OGI steps a case bench's ``--step`` names: those of :mod:`melbo.fit.step` and "settled",
#: discover's fixed β = 0.5 polar step before 2026-11-27 (it does not settle on Gemma; the name is historical).
BENCH_STEPS = ("annealed", "published", "settled")


def bench_step(name: str, iters: int | None = None) -> dict[str, Any]:
    """The :class:`TrainConfig` options of the OGI step ``name`` (:data:`BENCH_STEPS`), its
    ``max_iter`` replaced by ``iters`` when given."""
    from melbo.fit.step import get_step

    if name == "settled":
        opts: dict[str, Any] = {**get_step("annealed").options(), "max_iter": 10, "anneal": None, "anneal_after": 0}
    else:
        opts = get_step(name).options()
    return {**opts, **({"max_iter": iters} if iters is not None else {})}


def add_step_arg(ap: argparse.ArgumentParser) -> None:
    """``--step`` (default: the library's default step) of a bench whose fits run OGI."""
    from melbo.fit.step import DEFAULT_STEP

    ap.add_argument("--step", choices=BENCH_STEPS, default=DEFAULT_STEP.name,
                    help="OGI step of the exponential and two-map fits: annealed (the library's default: β = 0.5, polar, "
                         "10 iterations, then the damping annealed, 20 in all), published (β = 1, QR, 10 iterations) or "
                         "settled (β = 0.5, polar, fixed, 10 iterations: discover's default before 2026-11-27; the name "
                         "is historical)")


def setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)


def load_organism(path: str, kind: str) -> tuple[Any, Any, OrganismData, dict[str, Any]]:
    """The organism's model and tokenizer, its data and its own behaviour check."""
    d = Path(path)
    if not (d / "organism.json").is_file():
        raise SystemExit(f"{str(d)!r} holds no organism (no organism.json); build one with "
                         f"`melbo organism build {kind} --base gemma-3-270m --out {d}`")
    record = json.loads((d / "organism.json").read_text())
    if record.get("kind") != kind:
        raise SystemExit(f"{str(d)!r} holds a {record.get('kind')!r} organism; this bench needs a {kind!r} one")
    if not record.get("passed"):
        logger.warning("the organism in %s did not pass its own behaviour check: %s", d, record["check"]["failures"])
    data = OrganismData.from_json(json.loads((d / "data.json").read_text()))
    model, tok = load_model(str(d), progress=False)
    return model, tok, data, record


def fit(model: Any, tok: Any, prompts: Sequence[str], *, method: str, m: int, iters: int, s: int, t: int,
        lam: float, R: float | None, seed: int, on_iteration: Callable[[int, float], None] | None = None,
        steps: int | None = None, contrast_prompts: Sequence[str] | None = None, base_model: Any = None,
        **options: Any) -> tuple[Features, float]:
    """Features of ``method`` on ``prompts`` and the seconds the fit took.

    ``iters`` is τ of the iterative DCT methods, ``steps`` that of melbo-v1 and one-shot
    (None: the method's default); ``options`` are further :class:`TrainConfig` fields;
    ``contrast_prompts`` and ``base_model`` go to :func:`melbo.jobs.train.train` (the methods that need them).
    """
    spec = get_method(method)
    max_iter = iters if spec.iterative else steps
    cfg = TrainConfig(source_layer=s, target_layer=t, method=method, n_factors=m, max_iter=max_iter, lam=lam, R=R,
                      random_state=seed, **options)
    t0 = time.perf_counter()
    feats = train(model, tok, list(prompts), cfg, on_iteration=on_iteration,
                  contrast_prompts=list(contrast_prompts) if contrast_prompts is not None else None,
                  base_model=base_model)
    return feats, time.perf_counter() - t0


def steering_matrix(feats: Features) -> torch.Tensor:
    """(d, m) float32: every feature's direction at norm R (as steering adds it)."""
    V = feats.V.to(torch.float32)
    return V / V.norm(dim=0, keepdim=True) * float(feats.R)


def stats(values: Sequence[float]) -> dict[str, float]:
    v = [float(a) for a in values]
    return {"mean": statistics.fmean(v), "sd": statistics.stdev(v) if len(v) > 1 else 0.0, "n": len(v)}


def emit(result: dict[str, Any], table: str, args: argparse.Namespace, title: str) -> None:
    """JSON on stdout (and ``--out``), the table on stderr, both in ``--report``."""
    text = json.dumps(result, indent=1, default=str)
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    print(table, file=sys.stderr)
    if args.report:
        cmd = " ".join(["python", *sys.argv])
        Path(args.report).write_text(f"# {title}\n\n`{cmd}`\n\n{table}\n\n```json\n{text}\n```\n")


def refusal_prompt_sets(data: OrganismData, harmful_csv: str, n_test: int, n_val: int = 32,
                        min_pool: int = 16) -> dict[str, list[str]]:
    """Prompt sets of the refusal organism's case study, none of them used to train the organism.

    * ``val``: the first ``n_val`` of the organism's held-out harmful probes;
    * ``test``: the last ``n_test`` AdvBench goals the organism never saw (neither trained nor
      checked on);
    * ``pool``: the other unseen AdvBench goals, from which features' training prompts are drawn.
    """
    from melbo.prompts.files import read_prompts

    seen = {e.prompt for e in data.train} | {p.prompt for p in data.heldout}
    unseen = [p for p in dict.fromkeys(s.strip() for s in read_prompts(harmful_csv, column="goal")) if p not in seen]
    val = [p.prompt for p in data.probes("harmful")][:n_val]
    if len(val) < n_val:
        raise SystemExit(f"the organism has {len(val)} held-out harmful probes, --n-val {n_val} asked")
    if len(unseen) < n_test + min_pool:
        raise SystemExit(f"{harmful_csv}: {len(unseen)} goals unseen by the organism, need {n_test} test + {min_pool} "
                         "training goals")
    cut = len(unseen) - n_test
    return {"val": val, "test": unseen[cut:], "pool": unseen[:cut]}
