"""The jobs a user runs, each a function the command line calls: ``discover`` (fit → steer →
generate → rank → report; its settings in :mod:`melbo.jobs.discover_config`), ``train`` (fit
features with checkpoints and resume), ``demo`` (the discovery story), ``monitor`` (score
prompts against a learned perturbation) and ``distributed`` (fits sharded over GPUs)."""

from typing import TYPE_CHECKING

from melbo._lazy import lazy_exports

_EXPORTS = {
    "CHECKPOINT": "melbo.jobs.checkpoint:CHECKPOINT",
    "write_checkpoint": "melbo.jobs.checkpoint:write_checkpoint",
    "read_completions_cache": "melbo.jobs.discover_files:read_completions_cache",
    "check_resumable": "melbo.jobs.discover_files:check_resumable",
    "check_out_dir": "melbo.jobs.discover_files:check_out_dir",
    "DISCOVER_MARKER": "melbo.jobs.discover_files:DISCOVER_MARKER",
    "DiscoverConfig": "melbo.jobs.discover:DiscoverConfig",
    "Discovery": "melbo.jobs.discover:Discovery",
    "candidate_layers": "melbo.jobs.discover:candidate_layers",
    "default_layers": "melbo.jobs.discover:default_layers",
    "search_layers": "melbo.jobs.discover:search_layers",
    "ANNEAL_AFTER": "melbo.jobs.discover_config:ANNEAL_AFTER",
    "DEMO_N_TRAIN": "melbo.jobs.discover_config:DEMO_N_TRAIN",
    "DEMO_SCALES": "melbo.jobs.discover_config:DEMO_SCALES",
    "MAX_RANDOM": "melbo.jobs.discover_config:MAX_RANDOM",
    "ShardedCausalMap": "melbo.jobs.distributed:ShardedCausalMap",
    "distributed_exponential_dct": "melbo.jobs.distributed:distributed_exponential_dct",
    "distributed_fit": "melbo.jobs.distributed:distributed_fit",
    "init_distributed": "melbo.jobs.distributed:init_distributed",
    "shard_bounds": "melbo.jobs.distributed:shard_bounds",
    "DETECTORS": "melbo.jobs.monitor:DETECTORS",
    "REDUCES": "melbo.jobs.monitor:REDUCES",
    "VIEWS": "melbo.jobs.monitor:VIEWS",
    "FeatureStats": "melbo.jobs.monitor:FeatureStats",
    "MahalanobisStats": "melbo.jobs.monitor:MahalanobisStats",
    "Monitor": "melbo.jobs.monitor:Monitor",
    "fit_feature_stats": "melbo.jobs.monitor:fit_feature_stats",
    "fit_mahalanobis": "melbo.jobs.monitor:fit_mahalanobis",
    "ledoit_wolf": "melbo.jobs.monitor:ledoit_wolf",
    "out_of_fold_scores": "melbo.jobs.monitor:out_of_fold_scores",
    "prompt_activations": "melbo.jobs.monitor:prompt_activations",
    "TrainConfig": "melbo.jobs.train:TrainConfig",
    "read_checkpoint": "melbo.jobs.checkpoint:read_checkpoint",
}

__all__ = list(_EXPORTS)

__getattr__, __dir__ = lazy_exports(globals(), _EXPORTS)

if TYPE_CHECKING:  # the same names, eagerly, for type checkers
    from melbo.jobs.checkpoint import CHECKPOINT as CHECKPOINT
    from melbo.jobs.checkpoint import read_checkpoint as read_checkpoint
    from melbo.jobs.checkpoint import write_checkpoint as write_checkpoint
    from melbo.jobs.discover import DiscoverConfig as DiscoverConfig
    from melbo.jobs.discover import Discovery as Discovery
    from melbo.jobs.discover import candidate_layers as candidate_layers
    from melbo.jobs.discover import default_layers as default_layers
    from melbo.jobs.discover import search_layers as search_layers
    from melbo.jobs.discover_config import ANNEAL_AFTER as ANNEAL_AFTER
    from melbo.jobs.discover_config import DEMO_N_TRAIN as DEMO_N_TRAIN
    from melbo.jobs.discover_config import DEMO_SCALES as DEMO_SCALES
    from melbo.jobs.discover_config import MAX_RANDOM as MAX_RANDOM
    from melbo.jobs.discover_files import DISCOVER_MARKER as DISCOVER_MARKER
    from melbo.jobs.discover_files import check_out_dir as check_out_dir
    from melbo.jobs.discover_files import check_resumable as check_resumable
    from melbo.jobs.discover_files import read_completions_cache as read_completions_cache
    from melbo.jobs.distributed import ShardedCausalMap as ShardedCausalMap
    from melbo.jobs.distributed import distributed_exponential_dct as distributed_exponential_dct
    from melbo.jobs.distributed import distributed_fit as distributed_fit
    from melbo.jobs.distributed import init_distributed as init_distributed
    from melbo.jobs.distributed import shard_bounds as shard_bounds
    from melbo.jobs.monitor import DETECTORS as DETECTORS
    from melbo.jobs.monitor import REDUCES as REDUCES
    from melbo.jobs.monitor import VIEWS as VIEWS
    from melbo.jobs.monitor import FeatureStats as FeatureStats
    from melbo.jobs.monitor import MahalanobisStats as MahalanobisStats
    from melbo.jobs.monitor import Monitor as Monitor
    from melbo.jobs.monitor import fit_feature_stats as fit_feature_stats
    from melbo.jobs.monitor import fit_mahalanobis as fit_mahalanobis
    from melbo.jobs.monitor import ledoit_wolf as ledoit_wolf
    from melbo.jobs.monitor import out_of_fold_scores as out_of_fold_scores
    from melbo.jobs.monitor import prompt_activations as prompt_activations
    from melbo.jobs.train import TrainConfig as TrainConfig

del TYPE_CHECKING, lazy_exports
