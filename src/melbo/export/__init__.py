"""Features in other tools' file formats.

* :mod:`melbo.export.lm_eval` — steering files for lm-evaluation-harness's ``steered`` model.
"""
