"""melbo's batched decode loop against ``model.generate``, stop strings, seeded sampling
against the model's own distribution, errors before any forward, and a model left as it was."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from tiny_models import tiny_model

from melbo.generation import generate, generate_steered
from melbo.prompts import build_prompts
from melbo.steering.interventions import steer

PROMPTS = ["hello there", "write a poem about the sea and the sky please", "how"]  # different lengths: left padding


def _hf(model: torch.nn.Module, tok: Any, prompts: list[str], n: int) -> list[str]:
    """Plain ``model.generate`` (greedy) on one left-padded batch: the reference."""
    b = build_prompts(tok, prompts, chat=True, positions=1, padding_side="left")
    with torch.no_grad():
        seq = model.generate(input_ids=b.input_ids, attention_mask=b.attention_mask, max_new_tokens=n,  # type: ignore[operator]
                             do_sample=False, pad_token_id=tok.pad_token_id, temperature=None, top_p=None, top_k=None)
    return [tok.decode(r, skip_special_tokens=True) for r in seq[:, b.input_ids.shape[1] :]]


def _vectors(d: int, k: int, seed: int = 5) -> torch.Tensor:
    V = torch.randn(d, k, generator=torch.Generator().manual_seed(seed)) * 6
    V[:, 1] = 0.0  # an unsteered row among steered ones
    return V


class _Calls:
    """Counts forwards of a module (a pre-hook), removed on exit."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.n = 0
        self.handle = module.register_forward_pre_hook(lambda *_: setattr(self, "n", self.n + 1))

    def __enter__(self) -> _Calls:
        return self

    def __exit__(self, *exc: object) -> None:
        self.handle.remove()


@pytest.mark.parametrize("family", ["llama", "gemma3", "gpt2", "gemma2", "mistral", "qwen3", "mixtral", "qwen2_moe"])
def test_steered_generation_is_token_identical_to_hf_generate_one_vector_at_a_time(tok: Any, family: str) -> None:
    model = tiny_model(family, vocab=len(tok))
    V = _vectors(32, 4)
    want = []
    for j in range(4):
        with steer(model, V[:, j], layer=2, scale=1.5):
            want.append(_hf(model, tok, PROMPTS, 8))
    assert want[0] != want[1]  # the steering changes the text
    # shared prefix or not; one chunk, chunks that split vectors and prompts unevenly, one row a chunk
    for share, bs in [(True, None), (True, 5), (False, 2), (True, 1)]:
        got = generate_steered(model, tok, PROMPTS, V, layer=2, scale=1.5, max_new_tokens=8, chat=True,
                               share_prefix=share, batch_size=bs)
        assert got == want, (share, bs)
    assert generate(model, tok, PROMPTS, max_new_tokens=8, chat=True) == _hf(model, tok, PROMPTS, 8) == want[1]


def test_memory_budget_sizes_the_chunks_without_changing_the_text(llama: torch.nn.Module, tok: Any) -> None:
    V = _vectors(32, 3)
    big = generate_steered(llama, tok, PROMPTS, V, layer=1, max_new_tokens=5, chat=True)
    with _Calls(llama.model.layers[3]) as calls:  # one row a chunk
        tiny = generate_steered(llama, tok, PROMPTS, V, layer=1, max_new_tokens=5, chat=True, memory_budget=1)
    assert tiny == big
    # 9 chunks × (prompt replayed from the shared prefix + its last token + 4 decode steps),
    # + the one recording pass of the shared prefix
    assert calls.n == 9 * (1 + 1 + 4) + 1


def test_rows_that_end_leave_the_batch_and_match_hf_generate(tok: Any) -> None:
    model = tiny_model("gemma3", vocab=len(tok))
    b = build_prompts(tok, PROMPTS, chat=True, positions=1, padding_side="left")
    with torch.no_grad():
        seq = model.generate(input_ids=b.input_ids, attention_mask=b.attention_mask, max_new_tokens=3, do_sample=False,
                             pad_token_id=0, temperature=None, top_p=None, top_k=None)
    eos = int(seq[0, b.input_ids.shape[1] + 1])  # prompt 0's second new token ends its row from now on
    old = model.generation_config.eos_token_id
    model.generation_config.eos_token_id = eos
    try:
        want = _hf(model, tok, PROMPTS, 10)
        with _Calls(model.model.layers[0]) as calls:
            got = generate(model, tok, PROMPTS, max_new_tokens=10, chat=True, batch_size=1)
    finally:
        model.generation_config.eos_token_id = old
    assert got == want
    assert len(tok(got[0], add_special_tokens=False).input_ids) <= 2
    assert calls.n < 3 * 10  # prompt 0 stopped after 2 of 10 tokens


def test_stop_strings_cut_the_completion_and_stop_the_row(llama: torch.nn.Module, tok: Any) -> None:
    full = generate(llama, tok, PROMPTS[:1], max_new_tokens=16, chat=True)[0]
    ascii_at = [i for i in range(2, len(full) - 2) if full[i : i + 2].isascii() and full[i : i + 2].isprintable()]
    assert ascii_at, full
    stop = full[ascii_at[0] : ascii_at[0] + 2]
    want = full[: full.find(stop)]
    with _Calls(llama.model.layers[0]) as calls:
        got = generate(llama, tok, PROMPTS[:1], max_new_tokens=16, chat=True, stop=[stop, "never-seen-🦆"])
    assert got == [want]
    assert calls.n < 16  # fewer forwards than new tokens: the row stopped
    assert generate(llama, tok, PROMPTS[:1], max_new_tokens=16, chat=True, stop="never-seen-🦆") == [full]
    V = _vectors(32, 2)
    steered = generate_steered(llama, tok, PROMPTS, V, layer=1, max_new_tokens=16, chat=True)
    cut = generate_steered(llama, tok, PROMPTS, V, layer=1, max_new_tokens=16, chat=True, stop=stop)
    assert cut == [[t[: t.find(stop)] if stop in t else t for t in row] for row in steered]


def test_seeded_sampling_is_reproducible_and_independent_of_the_batch(llama: torch.nn.Module, tok: Any) -> None:
    V = _vectors(32, 3)
    kw: dict[str, Any] = {"layer": 1, "max_new_tokens": 6, "chat": True, "do_sample": True, "temperature": 1.0}
    a = generate_steered(llama, tok, PROMPTS, V, seed=7, **kw)
    assert a == generate_steered(llama, tok, PROMPTS, V, seed=7, batch_size=2, **kw)  # other chunks
    assert a != generate_steered(llama, tok, PROMPTS, V, seed=8, **kw)
    assert a != generate_steered(llama, tok, PROMPTS, V, layer=1, max_new_tokens=6, chat=True)  # not greedy
    # one (vector, prompt) pair alone gives the text it gave among the others (same vector index)
    alone = generate_steered(llama, tok, PROMPTS, V[:, :1], seed=7, batch_size=1, **kw)
    assert alone[0] == a[0]
    assert generate(llama, tok, PROMPTS, max_new_tokens=6, chat=True, do_sample=True, seed=3) == \
        generate(llama, tok, PROMPTS, max_new_tokens=6, chat=True, do_sample=True, seed=3, batch_size=1)


def test_sampling_draws_from_the_models_own_distribution(llama: torch.nn.Module, tok: Any) -> None:
    """First new token over 3000 rows (each its own seed) against softmax(logits / T) of a
    plain forward: every frequent token within 4.5 standard errors."""
    T, n = 0.7, 3000
    b = build_prompts(tok, ["hello there"], chat=True, positions=1)
    with torch.no_grad():
        p = torch.softmax(llama(input_ids=b.input_ids).logits[0, -1].double() / T, dim=-1)
    got = generate(llama, tok, ["hello there"] * n, max_new_tokens=1, chat=True, do_sample=True, temperature=T, seed=1)
    ids = [tok(t, add_special_tokens=False).input_ids for t in got]
    counts = torch.zeros_like(p)
    for t in ids:
        if len(t) == 1:
            counts[t[0]] += 1
    top = torch.argsort(p, descending=True)[:5]
    for v in top.tolist():
        se = float((p[v] * (1 - p[v]) / n).sqrt())
        assert abs(float(counts[v]) / n - float(p[v])) < 4.5 * se + 1e-9, (v, float(counts[v]) / n, float(p[v]))


def test_an_error_mid_generation_leaves_no_hook_and_an_unchanged_model(llama: torch.nn.Module, tok: Any) -> None:
    state = {k: v.clone() for k, v in llama.state_dict().items()}
    layers = llama.model.layers
    before = [(dict(m._forward_pre_hooks), dict(m._forward_hooks)) for m in layers]
    calls = {"n": 0}

    def boom(*_: object) -> None:
        calls["n"] += 1
        if calls["n"] == 4:  # during decoding, steering hook held
            raise RuntimeError("boom")

    handle = layers[3].register_forward_pre_hook(boom)
    try:
        with pytest.raises(RuntimeError, match="boom"):
            generate_steered(llama, tok, PROMPTS, _vectors(32, 2), layer=1, max_new_tokens=8, chat=True)
    finally:
        handle.remove()
    assert [(dict(m._forward_pre_hooks), dict(m._forward_hooks)) for m in layers] == before
    assert all(torch.equal(v, state[k]) for k, v in llama.state_dict().items())
    assert generate(llama, tok, PROMPTS, max_new_tokens=4, chat=True) == _hf(llama, tok, PROMPTS, 4)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"max_new_tokens": 0}, ValueError, "max_new_tokens=0"),
        ({"batch_size": 0}, ValueError, "batch_size=0"),
        ({"memory_budget": -1}, ValueError, "memory_budget=-1"),
        ({"do_sample": True, "temperature": 0.0}, ValueError, "temperature=0.0"),
        ({"temperature": float("nan")}, ValueError, "temperature=nan"),
        ({"do_sample": "yes"}, TypeError, "do_sample='yes'"),
        ({"seed": 1.5}, TypeError, "seed=1.5"),
        ({"stop": ""}, ValueError, "stop=''"),
        ({"stop": ["\n\n", 3]}, ValueError, "stop=\\['\\\\n\\\\n', 3\\]"),
        ({"layer": 9}, ValueError, "9"),
        ({"scale": float("inf")}, ValueError, "scale inf: must be a finite number"),
        ({"vectors": torch.zeros(5, 2)}, ValueError, "vectors must have shape \\(d_model, k\\) = \\(32, k\\), got \\(5, 2\\)"),
        ({"vectors": torch.full((32, 2), float("nan"))}, ValueError, "non-finite"),
    ],
)
def test_bad_arguments_fail_before_any_forward(llama: torch.nn.Module, tok: Any, kwargs: dict[str, Any],
                                               error: type[Exception], match: str) -> None:
    kw: dict[str, Any] = {"vectors": torch.zeros(32, 2), "layer": 1, **kwargs}
    vectors = kw.pop("vectors")
    with _Calls(llama.model.embed_tokens) as calls:
        with pytest.raises(error, match=match):
            generate_steered(llama, tok, PROMPTS, vectors, **kw)
        if not {"layer", "scale", "vectors"} & set(kwargs):  # also the unsteered entry point
            with pytest.raises(error, match=match):
                generate(llama, tok, PROMPTS, **{k: v for k, v in kw.items() if k != "layer"})
    assert calls.n == 0


def test_generation_speed_bench_runs_on_a_tiny_model(tmp_path: Any, tok: Any, capsys: Any) -> None:
    """bench/generation_speed.py end to end on a saved tiny model: paths a, b and c agree."""
    import json
    import sys
    from pathlib import Path

    bench = Path(__file__).resolve().parents[1] / "bench"
    model_dir = tmp_path / "tiny"
    tiny_model("gemma3", vocab=len(tok)).save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    sys.path.insert(0, str(bench))
    try:
        import generation_speed

        out = tmp_path / "speed.json"
        assert generation_speed.main(["--model", str(model_dir), "--features", "3", "--prompts", "2", "--tokens", "3",
                                      "--baseline-features", "2", "--layer", "1", "--norm", "4", "--out", str(out)]) == 0
    finally:
        sys.path.remove(str(bench))
    res = json.loads(out.read_text())
    assert res == json.loads(capsys.readouterr().out)
    assert res["identity_fp32_greedy"] == {"a_vs_c": 1.0, "b_vs_c": 1.0}
    assert res["baseline_extrapolated"] is True and set(res["ratios"]) == {"c_over_a_one_feature_at_a_time", "c_over_b_hf_folded"}
