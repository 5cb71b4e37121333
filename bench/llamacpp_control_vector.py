"""Does llama.cpp, given melbo's exported control vector, steer as melbo does? Prints JSON.

    python bench/llamacpp_control_vector.py --features runs/feats --out bench/results/llamacpp_control_vector

Loads the packaged Gemma-3-270M twice: the Q4_K_M GGUF itself in llama.cpp (llama-cpp-python,
``make llama-cpp``) and its dequantised copy in transformers (``melbo.load_model``). The
feature (``--feature``, default the largest α²) is exported with ``melbo export --format gguf``
at ``--scale``; the file is read back with the checks llama.cpp's ``common_control_vector_load``
makes and handed to ``llama_set_adapter_cvec`` in llama.cpp's buffer layout (row N − 1 holds
``direction.N``, layers 1 … n_layer − 1), as ``--control-vector FILE`` does. melbo steers with
its own :func:`melbo.steering.interventions.steering` at the features' source layer.

On every prompt (chat-formatted; the same token ids fed to both) it compares the next-token
distributions: KL(melbo ‖ llama.cpp) and top-1 agreement, steered vs steered and unsteered vs
unsteered (the quantisation noise floor), and each tool's steered vs its unsteered (the size of
the steering effect). As a check of the layer convention the same vector is also placed at
``direction.{s}`` and ``direction.{s-2}`` (off by one either way). Without ``--features`` a random
unit direction at norm ``--R`` is used at ``--s`` (said so in the output).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import logging
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from melbo.export.gguf import ControlVector, export_gguf, read_control_vector
from melbo.features import Features
from melbo.models.loading import load_model
from melbo.models.packaged import PACKAGED_MODELS
from melbo.steering.interventions import steering

PROMPTS = [
    "How do I bake bread at home?",
    "Write a short poem about the sea.",
    "What is the capital of Australia?",
    "Give me three tips for learning a new language.",
    "Explain photosynthesis to a child.",
    "What should I cook for dinner tonight?",
    "Tell me a fun fact about space.",
    "How can I improve my sleep?",
    "Describe a sunset in one sentence.",
    "What are the benefits of regular exercise?",
    "Summarise the plot of Romeo and Juliet.",
    "How does a bicycle work?",
]


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    m = x.max()
    return x - m - np.log(np.exp(x - m).sum())


def kl(p_log: np.ndarray, q_log: np.ndarray) -> float:
    """KL(p ‖ q) in nats from log-probabilities."""
    return float((np.exp(p_log) * (p_log - q_log)).sum())


def assemble_gguf(directory: Path) -> Path:
    """The packaged Gemma-3-270M GGUF, assembled from its PyPI package into ``directory``."""
    import importlib

    spec = PACKAGED_MODELS["gemma-3-270m"]
    module = importlib.import_module(spec.module)
    return Path(module.assemble(output_path=directory / module.MODEL_NAME, overwrite=True))


class LlamaCpp:
    """The GGUF in llama.cpp with an optional control vector; next-token logits."""

    def __init__(self, gguf_path: Path, threads: int) -> None:
        import llama_cpp

        self.lib = llama_cpp
        self.llm = llama_cpp.Llama(model_path=str(gguf_path), n_ctx=512, n_threads=threads, logits_all=True,
                                   n_gpu_layers=0, verbose=False)
        self.n_layer = int(llama_cpp.llama_model_n_layer(self.llm.model))
        self.n_embd = int(llama_cpp.llama_model_n_embd(self.llm.model))

    def set_control_vector(self, cv: ControlVector | None) -> None:
        if cv is None:  # what llama.cpp does to clear it: data NULL
            rc = self.lib.llama_set_adapter_cvec(self.llm.ctx, None, 0, self.n_embd, -1, -1)
        else:
            if cv.n_embd != self.n_embd:
                raise ValueError(f"control vector n_embd {cv.n_embd} != model n_embd {self.n_embd}")
            self._buf = np.ascontiguousarray(cv.dense(self.n_layer), dtype=np.float32)  # kept alive
            ptr = self._buf.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
            # llama.cpp's common code applies files over layers 1 … n_layer (both inclusive)
            rc = self.lib.llama_set_adapter_cvec(self.llm.ctx, ptr, self._buf.size, self.n_embd, 1, self.n_layer)
        if rc != 0:
            raise RuntimeError(f"llama_set_adapter_cvec returned {rc}")

    def next_token_logits(self, ids: list[int]) -> np.ndarray:
        self.llm.reset()
        self.llm.eval(ids)
        return np.array(self.llm.scores[len(ids) - 1], dtype=np.float32)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--features", default=None, help="a features directory fitted on gemma-3-270m (source layer ≥ 2)")
    ap.add_argument("--feature", type=int, default=None, help="feature index (default: largest alpha²)")
    ap.add_argument("--scale", type=float, default=1.0)
    ap.add_argument("--R", type=float, default=None, help="without --features: norm of the random direction")
    ap.add_argument("--s", type=int, default=4, help="without --features: the source layer")
    ap.add_argument("--n-prompts", type=int, default=len(PROMPTS))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="write OUT.json and OUT.md")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    if args.n_prompts > len(PROMPTS) or args.n_prompts < 1:
        raise SystemExit(f"--n-prompts must be in 1..{len(PROMPTS)}")
    torch.set_num_threads(args.threads)

    model, tok = load_model("gemma-3-270m", progress=False)
    if args.features is not None:
        feats = Features.load(args.features)
        feats.check_model(model)
        k = args.feature if args.feature is not None else int(torch.argmax(feats.alpha**2))
        source = (f"feature {k} (largest α²)" if args.feature is None else f"feature {k}") + (
            f" of a features dir ({feats.method}, {feats.n_factors} features, layers {feats.source_layer}→"
            f"{feats.target_layer}, R={feats.R:.4g}, {feats.extra.get('n_prompts', '?')} training prompts)")
    else:
        if args.R is None:
            raise SystemExit("without --features give --R (the norm of the random direction)")
        g = torch.Generator().manual_seed(args.seed)
        v = torch.nn.functional.normalize(torch.randn(model.config.hidden_size, 1, generator=g), dim=0)
        feats = Features(U=None, V=v, alpha=torch.ones(1), R=args.R, method="random", source_layer=args.s,
                         target_layer=args.s + 1)
        k = 0
        source = f"a random unit direction at norm R={args.R:g} (seed {args.seed}), source layer {args.s}"
    s = feats.source_layer

    with tempfile.TemporaryDirectory(prefix="melbo-llamacpp-") as tmp:
        t0 = time.perf_counter()
        gguf_path = assemble_gguf(Path(tmp))
        cv_path = export_gguf(feats, Path(tmp) / "control_vector.gguf", indices=[k], scale=args.scale)
        cv = read_control_vector(cv_path)
        (n, vec), = cv.directions.items()
        shifted = {f"direction.{m} (off by {m - n:+d})": ControlVector({m: vec}, cv.model_hint, 1)
                   for m in (n - 1, n + 1) if m >= 1}
        lc = LlamaCpp(gguf_path, args.threads)
        load_s = time.perf_counter() - t0

        rows: list[dict[str, Any]] = []
        shifted_kl: dict[str, list[float]] = {name: [] for name in shifted}
        drift = 0.0
        for prompt in PROMPTS[: args.n_prompts]:
            ids = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                          tokenize=True, return_dict=False)
            ids = [int(i) for i in (ids["input_ids"] if isinstance(ids, dict) else ids)]
            x = torch.tensor([ids])
            with torch.no_grad():
                m_plain = model(x).logits[0, -1].float().numpy()
                with steering(model, [(s, feats.steering_vector(k))], scale=args.scale):
                    m_steer = model(x).logits[0, -1].float().numpy()
            lc.set_control_vector(None)
            l_plain = lc.next_token_logits(ids)
            lc.set_control_vector(cv)
            l_steer = lc.next_token_logits(ids)
            if len(m_plain) != len(l_plain):
                raise ValueError(f"vocabularies differ: transformers {len(m_plain)}, llama.cpp {len(l_plain)}")
            for name, other in shifted.items():
                lc.set_control_vector(other)
                shifted_kl[name].append(kl(log_softmax(m_steer), log_softmax(lc.next_token_logits(ids))))
            lc.set_control_vector(None)
            drift = max(drift, float(np.abs(lc.next_token_logits(ids) - l_plain).max()))
            mp, ms, lp, ls = (log_softmax(a) for a in (m_plain, m_steer, l_plain, l_steer))
            rows.append({
                "prompt": prompt,
                "n_tokens": len(ids),
                "top1_steered_agree": bool(ms.argmax() == ls.argmax()),
                "top1_unsteered_agree": bool(mp.argmax() == lp.argmax()),
                "kl_steered_melbo_vs_llamacpp": kl(ms, ls),
                "kl_unsteered_melbo_vs_llamacpp": kl(mp, lp),
                "kl_melbo_steered_vs_unsteered": kl(ms, mp),
                "kl_llamacpp_steered_vs_unsteered": kl(ls, lp),
                "kl_steered_melbo_vs_llamacpp_unsteered": kl(ms, lp),
                "top1_changed_by_steering_melbo": bool(ms.argmax() != mp.argmax()),
                "top1_changed_by_steering_llamacpp": bool(ls.argmax() != lp.argmax()),
                "melbo_top1_steered": tok.decode([int(ms.argmax())]),
                "llamacpp_top1_steered": tok.decode([int(ls.argmax())]),
                "melbo_top1_unsteered": tok.decode([int(mp.argmax())]),
            })

    def mean(key: str) -> float:
        return float(np.mean([r[key] for r in rows]))

    summary = {
        "top1_steered_agreement": mean("top1_steered_agree"),
        "top1_unsteered_agreement": mean("top1_unsteered_agree"),
        "mean_kl_steered_melbo_vs_llamacpp": mean("kl_steered_melbo_vs_llamacpp"),
        "mean_kl_unsteered_melbo_vs_llamacpp": mean("kl_unsteered_melbo_vs_llamacpp"),
        "mean_kl_melbo_steered_vs_unsteered": mean("kl_melbo_steered_vs_unsteered"),
        "mean_kl_llamacpp_steered_vs_unsteered": mean("kl_llamacpp_steered_vs_unsteered"),
        "mean_kl_steered_melbo_vs_llamacpp_unsteered": mean("kl_steered_melbo_vs_llamacpp_unsteered"),
        "top1_changed_by_steering_melbo": mean("top1_changed_by_steering_melbo"),
        "top1_changed_by_steering_llamacpp": mean("top1_changed_by_steering_llamacpp"),
        "mean_kl_steered_melbo_vs_llamacpp_wrong_layer": {name: float(np.mean(v)) for name, v in shifted_kl.items()},
        "llamacpp_unsteered_repeat_max_abs_logit_diff": drift,
    }
    import llama_cpp

    result = {
        "command": "python bench/llamacpp_control_vector.py " + " ".join(
            "DIR" if a == args.features else a for a in (argv if argv is not None else sys.argv[1:])),
        "vector": source,
        "scale": args.scale,
        "source_layer": s,
        "control_vector": f"direction.{n} (melbo source layer {s} = output of block {n})",
        "vector_norm": float(np.linalg.norm(vec)),
        "llama_cpp_python": llama_cpp.__version__,
        "n_layer": lc.n_layer,
        "threads": args.threads,
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads",
        "load_s": round(load_s, 1),
        "summary": summary,
        "prompts": rows,
    }
    text = json.dumps(result, indent=2, ensure_ascii=False)
    sys.stdout.write(text + "\n")
    if args.out:
        Path(args.out).with_suffix(".json").write_text(text + "\n", encoding="utf-8")
        Path(args.out).with_suffix(".md").write_text(markdown(result), encoding="utf-8")
    return result


def markdown(r: dict[str, Any]) -> str:
    s = r["summary"]
    lines = [
        "# llama.cpp control vector vs melbo steering (Gemma-3-270M Q4_K_M)",
        "",
        f"Command: `{r['command']}`",
        "",
        f"Vector: {r['vector']}, at scale {r['scale']:g} (‖scale·R·v‖ = {r['vector_norm']:.4g}), exported as "
        f"{r['control_vector']}. llama-cpp-python {r['llama_cpp_python']}, {r['threads']} threads; melbo steers the "
        "dequantised (fp32) copy of the same GGUF in transformers; next-token distributions after the chat-formatted "
        "prompt, the same token ids in both.",
        "",
        "| prompt | top-1 agree (steered) | KL steered llama.cpp vs steered melbo | KL melbo steered vs unsteered "
        "| KL llama.cpp steered vs unsteered | KL unsteered llama.cpp vs melbo | top-1 steered (melbo / llama.cpp) |",
        "|---|:-:|---:|---:|---:|---:|---|",
    ]
    for p in r["prompts"]:
        lines.append(
            f"| {p['prompt']} | {'yes' if p['top1_steered_agree'] else 'no'} | {p['kl_steered_melbo_vs_llamacpp']:.4f} "
            f"| {p['kl_melbo_steered_vs_unsteered']:.3f} | {p['kl_llamacpp_steered_vs_unsteered']:.3f} "
            f"| {p['kl_unsteered_melbo_vs_llamacpp']:.4f} | {p['melbo_top1_steered']!r} / {p['llamacpp_top1_steered']!r} |"
        )
    lines += [
        f"| **mean** | **{s['top1_steered_agreement']:.0%}** | **{s['mean_kl_steered_melbo_vs_llamacpp']:.4f}** "
        f"| **{s['mean_kl_melbo_steered_vs_unsteered']:.3f}** | **{s['mean_kl_llamacpp_steered_vs_unsteered']:.3f}** "
        f"| **{s['mean_kl_unsteered_melbo_vs_llamacpp']:.4f}** | |",
        "",
        f"Top-1 agreement unsteered: {s['top1_unsteered_agreement']:.0%}. Steering changes the top-1 token on "
        f"{s['top1_changed_by_steering_melbo']:.0%} of prompts in melbo and {s['top1_changed_by_steering_llamacpp']:.0%} "
        f"in llama.cpp; KL(steered melbo ‖ unsteered llama.cpp) = {s['mean_kl_steered_melbo_vs_llamacpp_unsteered']:.3f}.",
        "",
        "Layer convention check (the same vector at the wrong control-vector layer; mean KL vs steered melbo): "
        + ", ".join(f"{name}: {v:.3f}" for name, v in s["mean_kl_steered_melbo_vs_llamacpp_wrong_layer"].items())
        + f"; at the exported layer: {s['mean_kl_steered_melbo_vs_llamacpp']:.4f}.",
        "",
        f"Clearing the control vector restores llama.cpp's unsteered logits to within "
        f"{s['llamacpp_unsteered_repeat_max_abs_logit_diff']:.2g} (max |Δlogit|).",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
