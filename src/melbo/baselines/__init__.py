"""Baselines DCT is compared with (``method.md`` §6), on the same Δ and the same interfaces.

Each is a pure function returning a :class:`melbo.fit.FitResult` (so
:meth:`melbo.features.Features.from_fit` wraps it and every steering, ablation and ranking
tool applies), plus an estimator with the one contract of :mod:`melbo.fit.estimator`
(``fit(delta)``, the same fitted attributes, ``to_features()``), registered in
:mod:`melbo.methods`:

* ``"melbo-v1"`` — :func:`melbo_v1` / :class:`MelboV1`: needs a
  :class:`~melbo.maps.transformer.TransformerCausalMap` (per-prompt effects).
* ``"one-shot"`` — :func:`one_shot` / :class:`OneShotSteering`: one prompt (the causal
  map's first) and a completion to promote (and/or one to suppress), given to the estimator.
* ``"mean-diff"`` — :func:`mean_difference` / :class:`MeanDifference`: the causal map's
  prompts (set A) against a contrast set B, given to the estimator.
* ``"obprop"`` — :func:`observable_direction` / :class:`ObservablePropagation`: the gradient
  of ``logit(A) − logit(B)`` with respect to the source-layer residual stream, averaged over
  the causal map's prompts (observable propagation); ``token_a``/``token_b`` given to the
  estimator.
* ``"random"`` — :func:`random_vectors` / :class:`RandomVectors`: any
  :class:`~melbo.maps.protocol.CausalMap`.

Every V is applied as ``R * V[:, ℓ]`` added to the residual stream entering the source
layer, at every position — where Δ is trained and DCT features are applied.
"""

from melbo.baselines.mean_diff import (
    MeanDifference,
    layer_input_activations,
    mean_activation,
    mean_difference,
)
from melbo.baselines.melbo_v1 import MelboV1, melbo_v1, melbo_v1_objective, per_prompt_delta
from melbo.baselines.obprop import (
    ObservablePropagation,
    cosine_similarity,
    coupling_coefficient,
    linear_readout,
    observable_direction,
    observable_gradients,
)
from melbo.baselines.one_shot import MODES as ONE_SHOT_MODES
from melbo.baselines.one_shot import (
    OneShotSteering,
    completion_log_probs,
    encode_completions,
    one_shot,
)
from melbo.baselines.random_vectors import RandomVectors, output_directions, random_vectors

__all__ = [
    "MeanDifference",
    "MelboV1",
    "ONE_SHOT_MODES",
    "ObservablePropagation",
    "OneShotSteering",
    "RandomVectors",
    "completion_log_probs",
    "coupling_coefficient",
    "cosine_similarity",
    "encode_completions",
    "layer_input_activations",
    "linear_readout",
    "mean_activation",
    "mean_difference",
    "melbo_v1",
    "melbo_v1_objective",
    "observable_direction",
    "observable_gradients",
    "one_shot",
    "output_directions",
    "per_prompt_delta",
    "random_vectors",
]
