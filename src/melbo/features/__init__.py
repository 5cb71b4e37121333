"""Fitted features with their provenance, saved as ``features.safetensors`` + ``config.json``.

One job a module:

* :mod:`melbo.features.value` — :class:`Features`, the validated value (U, V, α, R, layers,
  provenance) with its views (:meth:`~Features.subset`, :meth:`~Features.order_by`, …);
* :mod:`melbo.features.format` — the on-disk format: the two files, their hashes, format
  versions and reading older ones;
* :mod:`melbo.features.hub` — Hugging Face Hub repositories: finding one in the local cache
  and the model card of :meth:`Features.save_pretrained`;
* :mod:`melbo.features.names` — where features apply, in the names other tools use
  (:func:`hook_site`).

Everything public is importable from here, as before the split: ``from melbo.features import
Features, hook_site, CONFIG_FILE``.
"""

from melbo.features.format import (
    _REQUIRED_CONFIG_KEYS as _REQUIRED_CONFIG_KEYS,  # melbo.store.outputs.FEATURES_KEYS equals it; a test checks
)
from melbo.features.format import (
    CONFIG_FILE,
    FORMAT_VERSION,
    SUPPORTED_FORMAT_VERSIONS,
    TENSORS_FILE,
    melbo_version,
)
from melbo.features.hub import MODEL_CARD_FILE as MODEL_CARD_FILE
from melbo.features.names import DEFAULT_LAYERS_PATH as DEFAULT_LAYERS_PATH
from melbo.features.names import hook_site
from melbo.features.value import Features, ModelMismatchError, prompts_hash

__all__ = [
    "CONFIG_FILE",
    "FORMAT_VERSION",
    "Features",
    "ModelMismatchError",
    "SUPPORTED_FORMAT_VERSIONS",
    "TENSORS_FILE",
    "hook_site",
    "melbo_version",
    "prompts_hash",
]
