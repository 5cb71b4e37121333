"""The one same-model check (melbo.models.fingerprint.check_same_model) and its one error type."""

from __future__ import annotations

import logging

import pytest
from tiny_models import tiny_model

from melbo.errors import ModelMismatchError, UserError
from melbo.features import ModelMismatchError as FeaturesModelMismatchError
from melbo.models.fingerprint import check_same_model, model_fingerprint


def test_one_error_type_that_old_except_clauses_still_catch() -> None:
    assert FeaturesModelMismatchError is ModelMismatchError  # features' name is the same class
    assert issubclass(ModelMismatchError, UserError) and issubclass(ModelMismatchError, ValueError)


def test_check_same_model_accepts_the_model_and_refuses_another() -> None:
    model, other = tiny_model("llama", seed=0), tiny_model("llama", seed=1)
    fp = model_fingerprint(model)
    check_same_model(fp, model, what="monitor")  # the model itself
    check_same_model(fp, model_fingerprint(model), what="monitor")  # or its fingerprint
    with pytest.raises(ModelMismatchError, match=r"(?s)monitor fitted on a different model:.*monitor: .*model: .*--force"):
        check_same_model(fp, other, what="monitor")
    with pytest.raises(ModelMismatchError, match="no model fingerprint is stored with the features"):
        check_same_model({}, model, what="features")
    with pytest.raises(ModelMismatchError, match="trained elsewhere"):
        check_same_model(fp, other, what="adapter", hint="trained elsewhere")


def test_force_logs_instead_of_raising(caplog: pytest.LogCaptureFixture) -> None:
    model, other = tiny_model("llama", seed=0), tiny_model("llama", seed=1)
    with caplog.at_level(logging.WARNING, logger="melbo.models.fingerprint"):
        check_same_model(model_fingerprint(model), other, what="monitor", force=True)
    assert "different model" in caplog.text and "ignored: force=True" in caplog.text


# ------------------------------------------------------------ the one R check (melbo.errors.check_R)

@pytest.mark.parametrize("bad", [0, 0.0, -2.0, float("nan"), float("inf"), True, "2", None])
def test_check_R_refuses_what_is_not_a_finite_positive_number(bad: object) -> None:
    from melbo.errors import check_R

    with pytest.raises(UserError, match=r"^R must be a finite number > 0, got "):
        check_R(bad)


def test_every_R_site_uses_the_one_check() -> None:
    import torch

    from melbo.errors import check_R
    from melbo.fit import _common
    from melbo.fit.result import FitResult

    assert check_R(2) == 2.0 and isinstance(check_R(2), float)
    assert _common.check_R is check_R  # the fits' name for it is the same function
    V = torch.nn.functional.normalize(torch.randn(8, 2), dim=0)
    with pytest.raises(UserError, match=r"R must be a finite number > 0, got -1.0"):
        FitResult(U=None, V=V, alpha=torch.ones(2), R=-1.0, method="x")
