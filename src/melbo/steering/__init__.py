"""Changing what a model computes, without changing the model: steering and directional
ablation as context managers around removable hooks (:mod:`melbo.steering.interventions`; the hook
plumbing itself is :mod:`melbo.models.hooks`)."""
