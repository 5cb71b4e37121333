"""Bounded readers of user files (melbo.store.io, melbo.prompts.files): limits, encodings, malformed
input named by file and line — never a Python error from deep inside a parser."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from melbo.cli import main
from melbo.evaluate.analysis import Analysis
from melbo.features import CONFIG_FILE, Features
from melbo.prompts.files import read_prompts
from melbo.store.io import (
    FileFormatError,
    json_depth,
    parse_json,
    read_file_set,
    read_json_file,
    read_text_file,
    write_file_set,
)


def _deep(n: int) -> str:
    return "[" * n + "]" * n


# ---------------------------------------------------------------- prompt files


def test_a_utf8_bom_is_accepted_and_the_first_column_name_works(tmp_path: Path) -> None:
    p = tmp_path / "p.csv"
    p.write_bytes("\ufeffgoal,target\nhello,x\nhow are you,y\n".encode())
    assert read_prompts(p) == ["hello", "how are you"]
    for suffix, body in ((".txt", "one\ntwo\n"), (".json", '["one", "two"]'), (".jsonl", '"one"\n"two"\n')):
        q = tmp_path / f"b{suffix}"
        q.write_bytes(b"\xef\xbb\xbf" + body.encode())
        assert read_prompts(q) == ["one", "two"], suffix


def test_a_200_kb_csv_field_is_read_whole(tmp_path: Path) -> None:
    big = "word " * 40_000  # 200 kB, over csv's default field limit of 128 kB
    p = tmp_path / "big.csv"
    p.write_text(f'goal\n"{big}"\nsmall\n')
    prompts = read_prompts(p)
    assert prompts == [big.strip(), "small"]
    import csv

    assert csv.field_size_limit() == 131072  # the process-wide limit is left as it was


def test_an_unterminated_quote_is_an_error_at_the_line_it_starts(tmp_path: Path) -> None:
    p = tmp_path / "p.csv"
    p.write_text('goal,target\nfine,x\n"never closed, y\nthird,z\nfourth,w\n')
    with pytest.raises(ValueError, match=r"p\.csv:3: a quoted field starts here and is never closed"):
        read_prompts(p)
    q = tmp_path / "q.csv"
    q.write_text('goal\n"quoted"trailing\n')
    with pytest.raises(ValueError, match=r"q\.csv:2: malformed CSV"):
        read_prompts(q)
    ok = tmp_path / "ok.csv"  # quotes inside an unquoted field and newlines inside a quoted one are fine
    ok.write_text('goal\nsay "hi" to me\n"two\nlines"\n')
    assert read_prompts(ok) == ['say "hi" to me', "two\nlines"]


@pytest.mark.parametrize("suffix", [".txt", ".csv", ".json", ".jsonl"])
def test_bad_encoding_names_the_file_the_place_and_the_fix(tmp_path: Path, suffix: str) -> None:
    p = tmp_path / f"latin1{suffix}"
    body = {".txt": "caf\u00e9\n", ".csv": "goal\ncaf\u00e9\n", ".json": '["caf\u00e9"]', ".jsonl": '"caf\u00e9"\n'}[suffix]
    p.write_bytes(body.encode("latin-1"))
    with pytest.raises(ValueError, match=r"latin1.* is not UTF-8 \(byte 0xe9 at line \d+, column \d+\); re-save it as UTF-8"):
        read_prompts(p)
    u16 = tmp_path / f"u16{suffix}"
    u16.write_bytes(body.encode("utf-16"))
    with pytest.raises(ValueError, match="is UTF-16; re-save it as UTF-8"):
        read_prompts(u16)
    for enc in ("utf-32", "utf-32-be"):  # its BOM starts like UTF-16's: it used to be called UTF-16
        u32 = tmp_path / f"u32{suffix}"
        u32.write_bytes(("\ufeff" + body).encode(enc) if enc.endswith("be") else body.encode(enc))
        with pytest.raises(ValueError, match="u32.* is UTF-32; re-save it as UTF-8"):
            read_prompts(u32)


# every character str.splitlines() breaks at, but LF and CR LF
_NOT_NEWLINES = ["\u2028", "\u2029", "\x85", "\x0c", "\x0b", "\x1c", "\x1d", "\x1e", "\r"]


@pytest.mark.parametrize("sep", _NOT_NEWLINES)
def test_only_lf_and_crlf_end_a_prompt_line(tmp_path: Path, sep: str) -> None:
    """U+2028, a form feed and the rest are text inside a line: they used to split one prompt in two."""
    p = tmp_path / "p.txt"
    p.write_bytes(f"one{sep}half\r\ntwo\nthree{sep}\n".encode())
    assert read_prompts(p) == [f"one{sep}half", "two", "three"]  # strip() drops the trailing one, as any whitespace
    if ord(sep) >= 0x20:  # raw in a JSON string (control characters are not)
        q = tmp_path / "q.jsonl"
        q.write_bytes(f'"one{sep}half"\r\n{{"prompt": "two"}}\n'.encode())
        assert read_prompts(q) == [f"one{sep}half", "two"]


def test_a_chat_message_without_content_names_the_file_and_entry(tmp_path: Path) -> None:
    p = tmp_path / "chats.json"
    p.write_text(json.dumps([[{"role": "user", "content": "fine"}], [{"role": "system", "content": "x"}, {"role": "user"}]]))
    with pytest.raises(ValueError, match=r"chats\.json: entry 1, message 1 .* needs a string 'role' and a string 'content'"):
        read_prompts(p)
    q = tmp_path / "chats.jsonl"
    q.write_text(json.dumps([{"role": "user", "content": None}]) + "\n")
    with pytest.raises(ValueError, match=r"chats\.jsonl: line 1, message 0"):
        read_prompts(q)


def test_malformed_json_and_jsonl_name_file_line_and_column(tmp_path: Path) -> None:
    p = tmp_path / "p.json"
    p.write_text('[\n  "one",\n  "two" "three"\n]\n')
    with pytest.raises(ValueError, match=r"p\.json:3:9: invalid JSON"):
        read_prompts(p)
    q = tmp_path / "q.jsonl"
    q.write_text('"one"\n\n{"prompt": "two"}\n{"prompt": oops}\n')
    with pytest.raises(ValueError, match=r"q\.jsonl:4:12: invalid JSON"):
        read_prompts(q)
    r = tmp_path / "r.jsonl"
    r.write_text('"one"\n{"other": 1}\n')
    with pytest.raises(ValueError, match=r"r\.jsonl: line 2 is not a prompt"):
        read_prompts(r)


@pytest.mark.parametrize("suffix", [".json", ".jsonl"])
def test_deeply_nested_prompt_files_are_refused_before_parsing(tmp_path: Path, suffix: str) -> None:
    p = tmp_path / f"deep{suffix}"
    p.write_text(_deep(100_000))  # far past Python's recursion limit
    with pytest.raises(ValueError, match=rf"deep\{suffix}: JSON nested 100000 levels deep, more than the limit of 64"):
        read_prompts(p)


@pytest.mark.parametrize(("suffix", "body"), [(".txt", ""), (".txt", "\n  \n"), (".csv", ""), (".csv", "goal\n"),
                                              (".json", "[]"), (".jsonl", "\n")])
def test_files_without_prompts_are_a_clear_error(tmp_path: Path, suffix: str, body: str) -> None:
    p = tmp_path / f"empty{suffix}"
    p.write_text(body)
    with pytest.raises(ValueError, match=r"empty\.\w+ contains no prompts"):
        read_prompts(p)


def test_a_file_over_the_size_limit_is_refused_naming_the_limit(tmp_path: Path) -> None:
    p = tmp_path / "p.txt"
    p.write_text("x" * 2000)
    with pytest.raises(ValueError, match=r"p\.txt' is larger than the limit of 1000 bytes"):
        read_prompts(p, max_bytes=1000)
    assert read_prompts(p, max_bytes=2000) == ["x" * 2000]
    d = tmp_path / "dir.txt"
    d.mkdir()
    with pytest.raises(ValueError, match="is not a file"):
        read_prompts(d)


# ---------------------------------------------------------------- JSON metadata


def test_json_depth_ignores_brackets_inside_strings() -> None:
    assert json_depth('{"a": "[[[[{{{{", "b": [1, [2, "]]]"]]}') == 3
    assert json_depth("3") == 0 and json_depth(_deep(7)) == 7
    assert parse_json(_deep(5), source="x", max_depth=5) == [[[[[]]]]]
    with pytest.raises(FileFormatError, match="x: JSON nested 6 levels deep, more than the limit of 5"):
        parse_json(_deep(6), source="x", max_depth=5)


def test_a_deeply_nested_features_config_is_refused_naming_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = Features(U=torch.randn(8, 2), V=torch.randn(8, 2), alpha=torch.ones(2), R=1.0, method="exponential",
                 source_layer=1, target_layer=3)
    f.save(tmp_path)
    cfg = (tmp_path / CONFIG_FILE).read_text()
    (tmp_path / CONFIG_FILE).write_text(cfg.replace('"extra": {}', f'"extra": {{"x": {_deep(50_000)}}}'))
    with pytest.raises(ValueError, match=r"config\.json: JSON nested 50002 levels deep"):
        Features.load(tmp_path)
    with pytest.raises(SystemExit):
        main(["inspect", str(tmp_path)])
    err = capsys.readouterr().err
    assert "config.json: JSON nested" in err and "Traceback" not in err and "RecursionError" not in err


def test_analysis_files_that_are_not_analyses_are_named(tmp_path: Path) -> None:
    p = tmp_path / "numbers.json"
    p.write_text("[1, 2, 3]")
    with pytest.raises(ValueError, match=r"numbers\.json is not a melbo analysis \(a JSON list"):
        Analysis.load(p)
    p.write_text(json.dumps({"format": "something else"}))
    with pytest.raises(ValueError, match=r"numbers\.json:? (is )?not a melbo analysis"):
        Analysis.load(p)
    p.write_text(_deep(10_000))
    with pytest.raises(ValueError, match=r"numbers\.json: JSON nested"):
        Analysis.load(p)


def test_read_text_file_and_read_json_file_name_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"recipe 'nope\.json' does not exist|nope\.json' does not exist"):
        read_json_file(tmp_path / "nope.json", what="recipe")
    (tmp_path / "t.txt").write_bytes(b"\xef\xbb\xbfhi")
    assert read_text_file(tmp_path / "t.txt") == "hi"


# ---------------------------------------------------------------- file sets


def test_a_file_set_is_committed_by_its_manifest_and_checked_by_hash(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import melbo.store.io

    d = tmp_path / "ck"
    write_file_set(d, {"a.bin": lambda p: p.write_bytes(b"A1"), "b.bin": lambda p: p.write_bytes(b"B1")}, {"step": 1})
    state, paths = read_file_set(d)
    assert state == {"step": 1} and paths["a.bin"].read_bytes() == b"A1" and paths["b.bin"].read_bytes() == b"B1"

    def killed(path, text):  # type: ignore[no-untyped-def]
        raise KeyboardInterrupt  # both new files written, the manifest not

    monkeypatch.setattr(melbo.store.io, "atomic_write_text", killed)
    with pytest.raises(KeyboardInterrupt):
        write_file_set(d, {"a.bin": lambda p: p.write_bytes(b"A2"), "b.bin": lambda p: p.write_bytes(b"B2")}, {"step": 2})
    monkeypatch.undo()
    state, paths = read_file_set(d)  # still the whole first set
    assert state == {"step": 1} and paths["a.bin"].read_bytes() == b"A1" and paths["b.bin"].read_bytes() == b"B1"
    write_file_set(d, {"a.bin": lambda p: p.write_bytes(b"A3"), "b.bin": lambda p: p.write_bytes(b"B3")}, {"step": 3})
    state, paths = read_file_set(d)
    assert state == {"step": 3} and sorted(q.name for q in d.iterdir()) == sorted([paths["a.bin"].name,
                                                                                    paths["b.bin"].name, "state.json"])
    paths["b.bin"].write_bytes(b"B?")
    with pytest.raises(ValueError, match=r"b\.\w+\.bin' does not match its sha256"):
        read_file_set(d)


def test_a_checkpoint_written_before_manifests_is_read_and_replaced_by_the_next_set(tmp_path: Path) -> None:
    d = tmp_path / "ck"
    d.mkdir()
    (d / "state.json").write_text(json.dumps({"step": 4}))
    (d / "a.bin").write_bytes(b"old")
    state, paths = read_file_set(d, legacy=("a.bin",))
    assert state == {"step": 4} and paths["a.bin"].read_bytes() == b"old"
    write_file_set(d, {"a.bin": lambda p: p.write_bytes(b"new")}, {"step": 5})
    state, paths = read_file_set(d, legacy=("a.bin",))
    assert state == {"step": 5} and paths["a.bin"].read_bytes() == b"new" and not (d / "a.bin").exists()
    (d / "state.json").write_text(json.dumps({"step": 6}))  # legacy manifest whose file is gone
    with pytest.raises(FileNotFoundError, match=r"a\.bin' is missing"):
        read_file_set(d, legacy=("a.bin",))


def test_prompts_no_tokenizer_can_take_are_named(tmp_path: Path) -> None:
    """A lone surrogate (JSON escape) and a text file of NUL bytes are one-line errors naming the
    file and the prompt, not a tokenizer TypeError or a garbage prompt (found by bench/bad_inputs.py)."""

    surrogate = tmp_path / "s.json"
    surrogate.write_text('["fine", "\\ud800"]', encoding="utf-8")
    with pytest.raises(ValueError, match=r"s\.json: prompt 1 holds '\\ud800'") as info:
        read_prompts(surrogate)
    assert "\n" not in str(info.value)
    nul = tmp_path / "nul.txt"
    nul.write_bytes(b"\x00\x00\x00\n")
    with pytest.raises(ValueError, match=r"nul\.txt: prompt 0 holds only control characters"):
        read_prompts(nul)
    ok = tmp_path / "ok.txt"
    ok.write_text("tab\tinside\n", encoding="utf-8")
    assert read_prompts(ok) == ["tab\tinside"]
