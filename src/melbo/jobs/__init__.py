"""The jobs a user runs, each a function the command line calls: ``discover`` (fit → steer →
generate → rank → report; its settings in :mod:`melbo.jobs.discover_config`), ``train`` (fit
features with checkpoints and resume), ``demo`` (the discovery story), ``monitor`` (score
prompts against a learned perturbation) and ``distributed`` (fits sharded over GPUs)."""
