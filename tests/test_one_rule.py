"""One rule per concept: every entry point that takes λ, a steering scale, R or a prompt list
accepts and refuses exactly the same values, the ones the rule (written out here, independently
of melbo.errors) says."""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from tiny_models import tiny_model

from melbo.errors import UserError
from melbo.jobs.discover_config import DiscoverConfig
from melbo.jobs.train import TrainConfig
from melbo.maps.synthetic import SyntheticMap
from melbo.testing import tiny_tokenizer

# ------------------------------------------------------------------------------------ λ
LAMS: list[Any] = [0.5, 0.01, 0.999, 1e-9, 0, 0.0, -0.5, 1, 1.0, 1.01, 1e6, math.nan, math.inf, -math.inf]


def _lam_ok(v: float) -> bool:
    """method.md §3: λ is the relative size E(R) of Δ's non-linear part to solve for; E levels off
    near 1 for a transformer (melbo.errors.MAX_LAM), so λ is a number in the open interval (0, 1)."""
    return math.isfinite(v) and 0 < v < 1


class _Reached(Exception):
    """Calibration got past its argument checks to the first draw of directions."""


def _calibrate(v: float, monkeypatch: pytest.MonkeyPatch) -> bool:
    import melbo.fit.calibrate as cal

    def stop(*args: Any, **kwargs: Any) -> None:
        raise _Reached

    monkeypatch.setattr(cal, "randn", stop)
    delta = SyntheticMap.planted(8, 2, seed=0, dtype=torch.float64).delta
    try:
        cal.calibrate_R(delta, v, n_cal=2)
    except _Reached:
        return True
    except UserError as err:
        assert "lam" in str(err) and repr(v) in str(err)
        return False
    raise AssertionError("calibrate_R neither refused lam nor went on to calibrate")


def _refuses(fn: Any) -> bool:
    try:
        fn()
    except (ValueError, TypeError, argparse.ArgumentTypeError):
        return True
    return False


@pytest.mark.parametrize("v", LAMS)
def test_every_entry_point_takes_the_same_lams(v: float, monkeypatch: pytest.MonkeyPatch) -> None:
    from melbo.cli._common import _lam  # the type of --lam (train, discover, demo)

    ok = _lam_ok(v)
    assert _calibrate(v, monkeypatch) is ok  # calibrate_R and every estimator through it
    assert _refuses(lambda: TrainConfig(source_layer=1, target_layer=3, lam=v).validate()) is not ok
    assert _refuses(lambda: DiscoverConfig(lam=v).validate()) is not ok
    assert _refuses(lambda: _lam(repr(v) if math.isfinite(v) else str(v))) is not ok


# ------------------------------------------------------------------------------ scales
SCALES: list[Any] = [1.0, -1.0, 0.5, -100.0, 100.0, 100.5, -1e3, 0, 0.0, -0.0, math.nan, math.inf, True, "1"]


def _number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


@pytest.mark.parametrize("v", SCALES)
def test_every_steering_entry_point_takes_the_same_scales(v: Any) -> None:
    """Commands, exports and discover: a finite non-zero multiple of R of either sign, |scale| ≤ 100;
    the explorer admits 0 (its unsteered baseline); the library's steering any finite number."""
    from melbo.explore.engine import GenRequest
    from melbo.export.lm_eval import _scales

    bounded = _number(v) and abs(v) <= 100
    assert _refuses(lambda: DiscoverConfig(scales=(1.0, v)).validate()) is not (bounded and v != 0)
    assert _refuses(lambda: _scales(v, 1)) is not (bounded and v != 0)
    assert _refuses(lambda: GenRequest(feature=0, scale=v, prompts=("a",)).validate(4, False)) is not bounded


@pytest.mark.parametrize("v", [0.0, 1e4, -3.0, math.nan, math.inf, True])
def test_the_library_steers_at_any_finite_scale(v: Any) -> None:
    from melbo.steering.interventions import steering

    model = tiny_model("llama", vocab=len(tiny_tokenizer()))
    d = model.config.hidden_size
    def steer() -> None:
        with steering(model, [(1, torch.ones(d))], scale=v):
            pass

    assert _refuses(steer) is not _number(v)


# ---------------------------------------------------------------------------------- R
@pytest.mark.parametrize("v", [0.5, 3, 1e-6, 0, -1.0, math.nan, math.inf, True])
def test_every_config_takes_the_same_R(v: Any) -> None:
    ok = _number(v) and v > 0
    assert _refuses(lambda: TrainConfig(source_layer=1, target_layer=3, R=v).validate()) is not ok
    assert _refuses(lambda: DiscoverConfig(R=v).validate()) is not ok


# ---------------------------------------------------------------------------- prompts
CHAT = [{"role": "user", "content": "Hi"}]
PROMPT_LISTS: list[tuple[Any, bool]] = [
    (["Hello", "How are you?"], True),
    ([CHAT, "Hello"], True),
    ([], False),
    ("Hello", False),  # one string, not a list of prompts
    (["Hello", ""], False),
    (["   \t"], False),  # blank
    ([["not", "messages"]], False),
    ([[]], False),  # an empty conversation
    ([[{"role": "user"}]], False),  # a message without content
    ([[{"role": "user", "content": 5}]], False),
    ([5], False),
]


@pytest.mark.parametrize(("prompts", "ok"), PROMPT_LISTS)
def test_every_entry_that_takes_prompts_takes_the_same_lists(prompts: Any, ok: bool, tmp_path: Path) -> None:
    import json

    from melbo.baselines.mean_diff import mean_activation
    from melbo.jobs.monitor import prompt_activations
    from melbo.prompts import build_prompts
    from melbo.prompts.files import read_prompts

    tok = tiny_tokenizer(with_chat_template=True)
    model = tiny_model("llama", vocab=len(tok))
    assert _refuses(lambda: build_prompts(tok, prompts)) is not ok
    assert _refuses(lambda: prompt_activations(model, tok, prompts, [1])) is not ok
    assert _refuses(lambda: mean_activation(model, prompts, 1, tokenizer=tok)) is not ok
    if not isinstance(prompts, str):  # a file holds a list
        f = tmp_path / "p.json"
        f.write_text(json.dumps(prompts))
        assert _refuses(lambda: read_prompts(f)) is not ok


def test_a_single_string_is_a_type_error_everywhere() -> None:
    from melbo.errors import check_prompts
    from melbo.generation import generate

    tok = tiny_tokenizer()
    with pytest.raises(TypeError, match="not a single string"):
        check_prompts("abc")
    with pytest.raises(TypeError, match="not a single string"):  # used to generate for 'a', 'b' and 'c'
        generate(tiny_model("llama", vocab=len(tok)), tok, "abc", max_new_tokens=1)
