"""Model loading, layer access by name, and exact layer slices.

* :mod:`melbo.models.loading` — :func:`load_model`: HF ids in the local cache, local
  directories, GGUF files and the packaged Gemma-3-270M
* :mod:`melbo.models.access` — :func:`get_layer_access`: decoder layers, final norm,
  embeddings and residual writes, found by name (or given as paths)
* :mod:`melbo.models.slice` — :class:`LayerSlice`: replays layers s…t exactly as the model ran them

The names below are imported on first use.
"""

from typing import TYPE_CHECKING

from melbo._lazy import lazy_exports

_EXPORTS = {
    "DEFAULT_MODEL": "melbo.models.loading:DEFAULT_MODEL",
    "ModelLoadError": "melbo.models.loading:ModelLoadError",
    "ModelNotFoundError": "melbo.models.loading:ModelNotFoundError",
    "load_model": "melbo.models.loading:load_model",
    "ArchitectureError": "melbo.models.access:ArchitectureError",
    "LayerAccess": "melbo.models.access:LayerAccess",
    "get_layer_access": "melbo.models.access:get_layer_access",
    "LayerSlice": "melbo.models.slice:LayerSlice",
    "capture_slice": "melbo.models.slice:capture_slice",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(globals(), _EXPORTS)

if TYPE_CHECKING:  # the same names, eagerly, for type checkers and IDEs (explicit re-exports)
    from melbo.models.access import ArchitectureError as ArchitectureError
    from melbo.models.access import LayerAccess as LayerAccess
    from melbo.models.access import get_layer_access as get_layer_access
    from melbo.models.loading import DEFAULT_MODEL as DEFAULT_MODEL
    from melbo.models.loading import ModelLoadError as ModelLoadError
    from melbo.models.loading import ModelNotFoundError as ModelNotFoundError
    from melbo.models.loading import load_model as load_model
    from melbo.models.slice import LayerSlice as LayerSlice
    from melbo.models.slice import capture_slice as capture_slice

del TYPE_CHECKING, lazy_exports
