"""Prompt formatting, padding and target positions."""

import json

import pytest
import torch
from tiny_models import tiny_model

from melbo.maps.transformer import TransformerCausalMap
from melbo.prompts import FALLBACK_TEMPLATE, build_prompts
from melbo.prompts.files import read_prompts
from melbo.testing import tiny_tokenizer


def test_left_and_right_padding_put_target_positions_on_real_tokens() -> None:
    tok = tiny_tokenizer()
    prompts = ["a b", "a much longer prompt with several words"]
    for side in ("left", "right"):
        b = build_prompts(tok, prompts, positions=3, padding_side=side)  # type: ignore[arg-type]
        rows = torch.arange(2)[:, None]
        assert bool(b.attention_mask[rows, b.positions].all()), side
        for i, p in enumerate(prompts):
            ids = tok(p)["input_ids"]
            assert b.input_ids[i, b.positions[i]].tolist() == ids[-3:]


def test_delta_does_not_depend_on_padding_side() -> None:
    tok = tiny_tokenizer()
    model = tiny_model("llama", vocab=len(tok), attn="sdpa")
    prompts = ["a b c d", "a much longer prompt with several words"]
    maps = [
        TransformerCausalMap(model, build_prompts(tok, prompts, padding_side=side), 1, 3)  # type: ignore[arg-type]
        for side in ("left", "right")
    ]
    V = torch.nn.functional.normalize(torch.randn(maps[0].d_model, 3), dim=0)
    torch.testing.assert_close(maps[0].value(V), maps[1].value(V), rtol=1e-4, atol=1e-5)


def test_chat_template_and_system_prompt_are_used() -> None:
    tok = tiny_tokenizer(with_chat_template=True)
    b = build_prompts(tok, ["hello"], chat=True, system_prompt="You are a helpful assistant")
    assert b.template == "chat_template"
    assert "You are a helpful assistant" in b.texts[0] and "hello" in b.texts[0]
    conv = [[{"role": "user", "content": "hello"}]]
    assert build_prompts(tok, conv, system_prompt="You are a helpful assistant").texts == b.texts


def test_fallback_frame_when_tokenizer_has_no_template(caplog: pytest.LogCaptureFixture) -> None:
    tok = tiny_tokenizer(with_chat_template=False)
    with caplog.at_level("WARNING"):
        b = build_prompts(tok, ["hello"], chat=True)
    assert b.template == FALLBACK_TEMPLATE
    assert b.texts[0] == "User: hello\nAssistant:"
    assert "no chat template" in caplog.text


def test_explicit_positions_resolve_negative_indices() -> None:
    tok = tiny_tokenizer()
    b = build_prompts(tok, ["a b c d e"], positions=[[0, -1]], padding_side="right")
    n_tok = int(b.attention_mask.sum())
    assert b.positions.tolist() == [[0, n_tok - 1]]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"prompts": []}, "empty"),
        ({"prompts": "just a string"}, "list of prompts"),
        ({"prompts": ["x"], "positions": 0}, "positions=0"),
        ({"prompts": ["x"], "positions": 50}, "have only"),
        ({"prompts": ["x"], "positions": [[0], [0]]}, "for 2 prompts"),
        ({"prompts": ["a b c"], "positions": [[99]]}, "outside its"),
        ({"prompts": ["a b c d e f g h"], "max_length": 4}, "longer than the model's context of 4"),
        ({"prompts": [""]}, "empty string"),
    ],
)
def test_bad_prompt_input_is_a_clear_error(kwargs: dict, match: str) -> None:
    with pytest.raises((ValueError, TypeError), match=match):
        build_prompts(tiny_tokenizer(), **kwargs)


def test_prompt_longer_than_model_context_is_refused() -> None:
    tok = tiny_tokenizer()
    model = tiny_model("gpt2", vocab=len(tok))  # n_positions = 128
    with pytest.raises(ValueError, match="context of 128"):
        TransformerCausalMap(model, [" ".join(["word"] * 200)], 0, 2, tokenizer=tok)


@pytest.mark.parametrize("entry", ["generate", "generate_steered", "residual_norm"])
def test_every_entry_point_refuses_a_prompt_longer_than_the_context(entry: str) -> None:
    # A 200 KB prompt used to reach attention through these three (bench/bad_inputs: a timeout).
    from melbo.generation import generate, generate_steered
    from melbo.steering.interventions import residual_norm

    tok = tiny_tokenizer()
    model = tiny_model("gpt2", vocab=len(tok))  # n_positions = 128
    prompts = ["short", " ".join(["word"] * 200)]
    calls = {
        "generate": lambda: generate(model, tok, prompts, max_new_tokens=2),
        "generate_steered": lambda: generate_steered(model, tok, prompts, torch.zeros(model.config.n_embd, 1),
                                                     layer=1, max_new_tokens=2),
        "residual_norm": lambda: residual_norm(model, tok, prompts, 1),
    }
    with pytest.raises(ValueError, match=r"prompt 1 is \d+ tokens long, longer than the model's context of 128"):
        calls[entry]()


@pytest.mark.parametrize("entry", ["generate", "generate_steered"])
def test_generation_past_the_context_is_refused_before_a_token_is_made(entry: str) -> None:
    """discover --max-new-tokens 100000 on a 128-token context used to run until killed."""
    from melbo.generation import generate, generate_steered

    tok = tiny_tokenizer()
    model = tiny_model("gpt2", vocab=len(tok))  # n_positions = 128
    n = len(tok("short", add_special_tokens=True)["input_ids"])
    calls = {
        "generate": lambda k: generate(model, tok, ["short"], max_new_tokens=k, chat=False),
        "generate_steered": lambda k: generate_steered(model, tok, ["short"], torch.zeros(model.config.n_embd, 1), layer=1,
                                                       max_new_tokens=k, chat=False),
    }
    with pytest.raises(ValueError, match=rf"max_new_tokens=100000 .* longest prompt is {n} tokens and the model's "
                                         rf"context 128, so at most {128 - n} new tokens fit"):
        calls[entry](100_000)
    with pytest.raises(ValueError, match=f"at most {128 - n} new tokens"):
        calls[entry](128 - n + 1)
    out = calls[entry](128 - n)  # exactly fills the context: allowed
    assert len(out) == 1


def test_prompt_files(tmp_path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "p.txt").write_text("one\n\ntwo\n")
    (tmp_path / "p.json").write_text(json.dumps(["one", [{"role": "user", "content": "two"}]]))
    (tmp_path / "p.csv").write_text("goal,target\none,x\ntwo,y\n")
    assert read_prompts(tmp_path / "p.txt") == ["one", "two"]
    assert read_prompts(tmp_path / "p.json")[1] == [{"role": "user", "content": "two"}]
    assert read_prompts(tmp_path / "p.csv") == ["one", "two"]
    with pytest.raises(ValueError, match="no column 'prompt'"):
        read_prompts(tmp_path / "p.csv", column="prompt")
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        read_prompts(tmp_path / "missing.txt")
    (tmp_path / "p.yaml").write_text("x")
    with pytest.raises(ValueError, match="unsupported prompt file type"):
        read_prompts(tmp_path / "p.yaml")


def test_left_padding_does_not_shift_absolute_positions_of_gpt2() -> None:
    tok = tiny_tokenizer()
    model = tiny_model("gpt2", vocab=len(tok), attn="sdpa")
    short, long = "a b c d", "a much longer prompt with several words"
    V = torch.nn.functional.normalize(torch.randn(32, 2, generator=torch.Generator().manual_seed(0)), dim=0)
    alone = TransformerCausalMap(model, build_prompts(tok, [short]), 1, 3).value(V)
    both = TransformerCausalMap(model, build_prompts(tok, [short, long], padding_side="left"), 1, 3)
    long_alone = TransformerCausalMap(model, build_prompts(tok, [long]), 1, 3).value(V)
    torch.testing.assert_close(both.value(V), (alone + long_alone) / 2, rtol=1e-4, atol=1e-5)
