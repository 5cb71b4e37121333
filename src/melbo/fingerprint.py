"""Moved to :mod:`melbo.models.fingerprint` (a model's fingerprint is about models, and
:mod:`melbo.models` checks an adapter's base model with it); this name re-exports it."""

from melbo.models.fingerprint import (
    FINGERPRINT_VERSION,
    N_WEIGHT_ELEMENTS,
    VOLATILE_CONFIG_KEYS,
    check_same_model,
    describe_fingerprint,
    model_fingerprint,
    same_model,
)

__all__ = [
    "FINGERPRINT_VERSION",
    "N_WEIGHT_ELEMENTS",
    "VOLATILE_CONFIG_KEYS",
    "describe_fingerprint",
    "model_fingerprint",
    "check_same_model",
    "same_model",
]
