"""Re-rank kept audit runs without a model: the phrase ranking alone (``--phrases-only``, the
ranking before issue 25) on the very completions ``bench/audit.py --keep DIR`` kept, scored with
each organism's recorded checker — what the behaviour-level ranking changed, on the same text.

    python bench/audit_rerank.py --keep /tmp/audit-keep --organisms organisms/audit --report bench/results/audit_rerank.md
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from _case import emit

from melbo.evaluate.behaviours import rank_completions
from melbo.organisms.zoo import checker_from_json


def rerank(run_dir: Path, organism: Path, *, top: int = 5, min_rate: float = 0.5) -> dict[str, Any]:
    beh = json.loads((run_dir / "behaviours.json").read_text())
    cache = json.loads((run_dir / "completions.json").read_text())
    record = json.loads((organism / "organism.json").read_text())
    check = checker_from_json(record["hidden"]["checker"])
    assert check is not None
    prompts = beh["eval_prompts"]
    feats: dict[tuple[int, float], list[str]] = {}
    rand: dict[tuple[int, float], list[str]] = {}
    for key, texts in cache.items():
        if "@" not in key:
            continue
        kind, scale = key.split("@")
        for j, t in enumerate(texts):
            (feats if kind == "features" else rand)[(j, float(scale))] = t
    groups, _, _ = rank_completions(feats, cache["unsteered"], prompts, rand,
                                    min_consistency=beh["config"]["min_consistency"])

    def rate(texts: list[str]) -> float:
        return sum(bool(check(p, c)) for p, c in zip(prompts, texts)) / len(prompts)

    found = next((g.rank for g in groups[:top] if max(rate(feats[m]) for m in g.members) >= min_rate), None)
    with_shifts = next((g["rank"] for g in beh["groups"][:top]
                        if max(rate(feats[(m["vector"], m["scale"])]) for m in g["members"]) >= min_rate), None)
    return {"organism": organism.name, "kind": record["hidden"]["kind"], "phrases_only_rank": found,
            "with_shifts_rank": with_shifts, "phrases_only_top": [g.signature for g in groups[:top]],
            "with_shifts_top": [g["signature"] for g in beh["groups"][:top]]}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--keep", required=True, help="bench/audit.py's --keep directory")
    ap.add_argument("--organisms", required=True, help="bench/audit.py's --organisms directory")
    ap.add_argument("--out", default=None)
    ap.add_argument("--report", default=None)
    args = ap.parse_args(argv)
    rows = []
    for run_dir in sorted(Path(args.keep).glob("*/seed*")):
        if (run_dir / "behaviours.json").is_file():
            rows.append({**rerank(run_dir, Path(args.organisms) / run_dir.parent.name), "seed": run_dir.name})
    result = {"bench": "audit_rerank", "runs": rows}
    lines = ["| organism | kind | seed | found at rank, behaviour-level ranking | found at rank, phrases only | "
             "phrases-only top 5 |", "|---|---|---|---:|---:|---|"]
    for r in rows:
        lines.append(f"| {r['organism']} | {r['kind']} | {r['seed']} | {r['with_shifts_rank'] or 'missed'} | "
                     f"{r['phrases_only_rank'] or 'missed'} | {', '.join(repr(s) for s in r['phrases_only_top'])} |")
    emit(result, "\n".join(lines), args, "Audit runs re-ranked by phrases alone")
    return result


if __name__ == "__main__":
    main()
