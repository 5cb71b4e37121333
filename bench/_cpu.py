"""The one description of the CPU a bench ran on, recorded with every result: lscpu's model
name and whether the CPU has fast bf16 (avx512_bf16, amx_bf16), which decides what a bf16
timing means. No torch, no melbo: benches that run the CLI in subprocesses use it too."""

from __future__ import annotations

import platform
import subprocess

BF16_FLAGS = ("avx512_bf16", "amx_bf16", "amx_tile")


def cpu_description() -> str:
    """``"<model name>; bf16 flags: avx512_bf16, amx_bf16"`` or ``"…; no avx512_bf16, no amx"``."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        out = ""
    fields = {k.strip(): v.strip() for k, _, v in (ln.partition(":") for ln in out.splitlines())}
    name = fields.get("Model name") or platform.processor() or platform.machine() or "unknown"
    flags = set(fields.get("Flags", "").split())
    fast = [f for f in BF16_FLAGS if f in flags]
    return f"{name}; {'bf16 flags: ' + ', '.join(fast) if fast else 'no avx512_bf16, no amx'}"
