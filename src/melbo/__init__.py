"""melbo: mechanistically eliciting latent behaviours in language models.

Deep causal transcoders fit a shallow MLP to the causal map Δ from a source layer to a
target layer; its input directions are steering vectors. See ``melbo.maps.transformer``.

Everything a user needs is a name here, imported on first use (``import melbo`` does not
import torch)::

    model, tok = melbo.load_model("gemma-3-270m")
    delta = melbo.TransformerCausalMap(model, ["Tell me a joke."], 4, 10, tokenizer=tok)
    est = melbo.ExponentialDCT(n_factors=64).fit(delta)    # calibrates R first
    U, V = est.U_, est.V_
    with melbo.steer(model, V[:, 0], layer=4, scale=est.R_):
        print(melbo.generate(model, tok, ["Tell me a story."]))

* loading and layers: `load_model`, `get_layer_access`, `build_prompts`, `read_prompts`
* Δ and calibration: `TransformerCausalMap`, `calibrate_R`
* methods: `ExponentialDCT`, `QuadraticDCT`, `LinearDCT`, `ContrastiveDCT`, `ModelDiffDCT`,
  `MelboV1`, `OneShotSteering`, `MeanDifference`, `ObservablePropagation`, `RandomVectors`; their names in `method_names` (:mod:`melbo.methods`)
* saved features: `Features`
* interventions and generation: `steer`, `steer_features`, `ablate`, `generate`,
  `generate_steered`
* scores: `jailbreak_score`, `feature_scores`, `steered_scores`, `analyze`, `is_refusal`
* deployment monitor: `Monitor` (``Monitor.fit(model, tok, features, clean_prompts, fpr=0.01)``)
* discovery: the module ``melbo.jobs.discover`` (``melbo.jobs.discover.discover(model, tok, prompts,
  melbo.DiscoverConfig(), out)``; a function of the same name here would be shadowed by the
  module as soon as it is imported); organisms: `build_organism`, `default_config`
* warnings: `ConvergenceWarning`

Subpackages (``melbo.fit``, ``melbo.evaluate``, …) are imported on first access too.
"""

from typing import TYPE_CHECKING

from melbo._lazy import lazy_exports
from melbo._moved import install as _install_moved
from melbo._version import __version__  # the one version source (pyproject.toml reads it)

_EXPORTS = {
    # loading, layers, prompts
    "load_model": "melbo.models.loading:load_model",
    "get_layer_access": "melbo.models.access:get_layer_access",
    "build_prompts": "melbo.prompts:build_prompts",
    "read_prompts": "melbo.prompts.files:read_prompts",
    # the causal map and calibration
    "TransformerCausalMap": "melbo.maps.transformer:TransformerCausalMap",
    "calibrate_R": "melbo.fit.calibrate:calibrate_R",
    # estimators (one per registered method; see melbo.methods)
    "ExponentialDCT": "melbo.fit.exponential:ExponentialDCT",
    "QuadraticDCT": "melbo.fit.quadratic:QuadraticDCT",
    "LinearDCT": "melbo.fit.linear:LinearDCT",
    "ContrastiveDCT": "melbo.fit.two_map:ContrastiveDCT",
    "ModelDiffDCT": "melbo.fit.two_map:ModelDiffDCT",
    "MelboV1": "melbo.baselines.melbo_v1:MelboV1",
    "OneShotSteering": "melbo.baselines.one_shot:OneShotSteering",
    "MeanDifference": "melbo.baselines.mean_diff:MeanDifference",
    "ObservablePropagation": "melbo.baselines.obprop:ObservablePropagation",
    "RandomVectors": "melbo.baselines.random_vectors:RandomVectors",
    "method_names": "melbo.methods:method_names",
    "get_method": "melbo.methods:get_method",
    "ConvergenceWarning": "melbo.fit:ConvergenceWarning",
    # saved features
    "Features": "melbo.features:Features",
    # interventions and generation
    "steer": "melbo.steering.interventions:steer",
    "steer_features": "melbo.steering.interventions:steer_features",
    "ablate": "melbo.steering.interventions:ablate",
    "generate": "melbo.generation:generate",
    "generate_steered": "melbo.generation:generate_steered",
    # scores and analyses
    "jailbreak_score": "melbo.evaluate.scores:jailbreak_score",
    "feature_scores": "melbo.evaluate.scores:feature_scores",
    "steered_scores": "melbo.evaluate.scores:steered_scores",
    "analyze": "melbo.evaluate.analysis:analyze",
    "is_refusal": "melbo.evaluate.refusal:is_refusal",
    # deployment monitor
    "Monitor": "melbo.jobs.monitor:Monitor",
    # discovery and organisms
    "DiscoverConfig": "melbo.jobs.discover:DiscoverConfig",
    "build_organism": "melbo.organisms.build:build_organism",
    "default_config": "melbo.organisms.build:default_config",
}

__all__ = ["__version__", *_EXPORTS]

__getattr__, __dir__ = lazy_exports(globals(), _EXPORTS)
_install_moved()  # the modules that moved into stage subpackages keep their old names, deprecated

if TYPE_CHECKING:  # the same names, eagerly, for type checkers and IDEs (explicit re-exports)
    from melbo.baselines.mean_diff import MeanDifference as MeanDifference
    from melbo.baselines.melbo_v1 import MelboV1 as MelboV1
    from melbo.baselines.obprop import ObservablePropagation as ObservablePropagation
    from melbo.baselines.one_shot import OneShotSteering as OneShotSteering
    from melbo.baselines.random_vectors import RandomVectors as RandomVectors
    from melbo.evaluate.analysis import analyze as analyze
    from melbo.evaluate.refusal import is_refusal as is_refusal
    from melbo.evaluate.scores import feature_scores as feature_scores
    from melbo.evaluate.scores import jailbreak_score as jailbreak_score
    from melbo.evaluate.scores import steered_scores as steered_scores
    from melbo.features import Features as Features
    from melbo.fit import ConvergenceWarning as ConvergenceWarning
    from melbo.fit.calibrate import calibrate_R as calibrate_R
    from melbo.fit.exponential import ExponentialDCT as ExponentialDCT
    from melbo.fit.linear import LinearDCT as LinearDCT
    from melbo.fit.quadratic import QuadraticDCT as QuadraticDCT
    from melbo.fit.two_map import ContrastiveDCT as ContrastiveDCT
    from melbo.fit.two_map import ModelDiffDCT as ModelDiffDCT
    from melbo.generation import generate as generate
    from melbo.generation import generate_steered as generate_steered
    from melbo.jobs.discover import DiscoverConfig as DiscoverConfig
    from melbo.jobs.monitor import Monitor as Monitor
    from melbo.maps.transformer import TransformerCausalMap as TransformerCausalMap
    from melbo.methods import get_method as get_method
    from melbo.methods import method_names as method_names
    from melbo.models.access import get_layer_access as get_layer_access
    from melbo.models.loading import load_model as load_model
    from melbo.organisms.build import build_organism as build_organism
    from melbo.organisms.build import default_config as default_config
    from melbo.prompts import build_prompts as build_prompts
    from melbo.prompts.files import read_prompts as read_prompts
    from melbo.steering.interventions import ablate as ablate
    from melbo.steering.interventions import steer as steer
    from melbo.steering.interventions import steer_features as steer_features

del TYPE_CHECKING, lazy_exports, _install_moved
