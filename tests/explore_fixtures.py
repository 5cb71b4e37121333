"""A tiny explorable run for the explore tests: a random-init Llama, 6 random features and a
discover record whose signature and one cached completion are XSS payloads."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from tiny_models import tiny_model

from melbo.features import Features

XSS = '<img src=x onerror="window.__xss=1"><script>window.__xss=2</script>'
PROMPTS = ["Tell me about rivers.", "How do I make a cake?", "Write a poem about the sea."]
N_FEATURES = 6
MAX_NEW_TOKENS = 8  # discover's setting below: the explorer uses it too, so its completions are cache hits


def make_model() -> tuple[torch.nn.Module, Any]:
    from melbo.testing import tiny_tokenizer

    tok = tiny_tokenizer(with_chat_template=True)
    return tiny_model("llama", vocab=len(tok)), tok


def make_run(directory: Path, model: torch.nn.Module) -> Path:
    """A discover-style run in ``directory``: ``features/``, ``behaviours.json`` (behaviour
    scores for features 0..3, feature 2 best) and ``completions.json`` (feature 1 at 1 R says
    :data:`XSS` on every prompt)."""
    g = torch.Generator().manual_seed(0)
    d = model.config.hidden_size
    V = torch.nn.functional.normalize(torch.randn(d, N_FEATURES, generator=g), dim=0)
    U = torch.nn.functional.normalize(torch.randn(d, N_FEATURES, generator=g), dim=0)
    alpha = torch.tensor([0.5, 2.0, 1.0, 3.0, 0.25, 1.5])
    feats = Features.from_fit(type("R", (), {"U": U, "V": V, "alpha": alpha, "R": 8.0, "method": "exponential"})(),
                              source_layer=1, target_layer=3, model=model)
    feats.save(directory / "features")
    scores = {0: 0.1, 1: 0.5, 2: 0.9, 3: 0.3}
    record = {
        "config": {"max_new_tokens": MAX_NEW_TOKENS, "chat": True, "scales": [1.0, 2.0]},
        "features": [{"vector": k, "scale": s, "score": v * s / 2, "rate": v * s / 2,
                      "signature": XSS if k == 1 else f"phrase {k}"} for k, v in scores.items() for s in (1.0, 2.0)],
        "groups": [{"rank": 1, "members": [{"vector": 2, "scale": 2.0}]}],
        "eval_prompts": PROMPTS,
    }
    (directory / "behaviours.json").write_text(json.dumps(record))
    comps = {"key": "x", "unsteered": ["plain a", "plain b", "plain c"],
             "features@1": [[f"f{k} text {i}" for i in range(3)] if k != 1 else [XSS] * 3 for k in range(N_FEATURES)]}
    (directory / "completions.json").write_text(json.dumps(comps))
    return directory
