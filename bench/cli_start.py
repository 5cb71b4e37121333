"""Start-up time of the command line: ``melbo --help``, ``melbo train --help`` and an argument error.

Each case is a fresh interpreter running the console script's entry point
(``from melbo.cli import main; sys.exit(main())``), timed from the outside as wall time; the
median (and min/max) of ``--runs`` runs is reported, plus whether torch was imported (from
``-X importtime`` of one extra run). With ``--ref COMMIT`` the same cases also run against the
``src/`` tree of that commit (extracted with ``git archive`` into a temporary directory): the
before/after comparison in one run, under the same load. The load average is recorded: other
jobs on the cores inflate every number.

    python bench/cli_start.py --runs 7 --ref a6c0caf --out bench/results/cli_start.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from io import BytesIO
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ENTRY = "import sys; from melbo.cli import main; sys.exit(main())"  # what the `melbo` script runs
CASES = {
    "melbo --help": ["--help"],
    "melbo train --help": ["train", "--help"],
    "melbo train --method nope (argument error)": ["train", "--method", "nope", "--prompts", "p.txt",
                                                    "--source-layer", "1", "--target-layer", "2", "--out", "o"],
}


def _run(src: Path, args: list[str], *, importtime: bool = False) -> tuple[float, int, str]:
    env = dict(os.environ, PYTHONPATH=str(src))
    cmd = [sys.executable, *(["-X", "importtime"] if importtime else []), "-c", ENTRY, *args]
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tempfile.gettempdir())
    return time.perf_counter() - t0, p.returncode, p.stderr


def measure(src: Path, runs: int) -> dict[str, dict[str, object]]:
    """Per case: median/min/max wall seconds over ``runs``, exit status and whether torch loaded."""
    out: dict[str, dict[str, object]] = {}
    for name, args in CASES.items():
        _run(src, args)  # warm the file cache and the .pyc files
        times, rc = [], 0
        for _ in range(runs):
            t, rc, _ = _run(src, args)
            times.append(t)
        _, _, log = _run(src, args, importtime=True)
        mods = {ln.rsplit("|", 1)[-1].strip() for ln in log.splitlines() if ln.startswith("import time:")}
        out[name] = {"median_s": round(statistics.median(times), 3), "min_s": round(min(times), 3),
                     "max_s": round(max(times), 3), "exit_status": rc, "imports_torch": "torch" in mods}
    return out


def extract(ref: str, into: Path) -> Path:
    """The ``src/`` tree of commit ``ref``, written under ``into``; returns its ``src`` dir."""
    data = subprocess.run(["git", "archive", ref, "src"], cwd=ROOT, capture_output=True, check=True).stdout
    with tarfile.open(fileobj=BytesIO(data)) as tar:
        tar.extractall(into, filter="data")
    return into / "src"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=7, help="timed runs per case (median reported)")
    ap.add_argument("--ref", default=None, help="also measure the src/ of this commit (the 'before')")
    ap.add_argument("--out", default=None, help="write the JSON here too (e.g. bench/results/cli_start.json)")
    args = ap.parse_args()
    load_before = os.getloadavg()
    res: dict[str, object] = {
        "command": "python " + " ".join(shlex.quote(a) for a in sys.argv),
        "entry": ENTRY,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "runs": args.runs,
        "after": {"src": "working tree", "cases": measure(ROOT / "src", args.runs)},
    }
    if args.ref:
        with tempfile.TemporaryDirectory() as tmp:
            res["before"] = {"src": args.ref, "cases": measure(extract(args.ref, Path(tmp)), args.runs)}
    res["loadavg_1_5_15_min"] = {"start": [round(x, 2) for x in load_before],
                                 "end": [round(x, 2) for x in os.getloadavg()]}
    text = json.dumps(res, indent=1)
    sys.stdout.write(text + "\n")
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
