"""The causal map Δ that every fit reads (``method.md`` §1): its protocol
(:mod:`melbo.maps.protocol`), Δ of a real model (:mod:`melbo.maps.transformer`) and a map with
planted factors for tests and the recovery benchmark (:mod:`melbo.maps.synthetic`)."""

from typing import TYPE_CHECKING

from melbo._lazy import lazy_exports

_EXPORTS = {
    "CausalMap": "melbo.maps.protocol:CausalMap",
    "PlantedMap": "melbo.maps.synthetic:PlantedMap",
    "SyntheticMap": "melbo.maps.synthetic:SyntheticMap",
    "TransformerCausalMap": "melbo.maps.transformer:TransformerCausalMap",
}

__all__ = list(_EXPORTS)

__getattr__, __dir__ = lazy_exports(globals(), _EXPORTS)

if TYPE_CHECKING:  # the same names, eagerly, for type checkers
    from melbo.maps.protocol import CausalMap as CausalMap
    from melbo.maps.synthetic import PlantedMap as PlantedMap
    from melbo.maps.synthetic import SyntheticMap as SyntheticMap
    from melbo.maps.transformer import TransformerCausalMap as TransformerCausalMap

del TYPE_CHECKING, lazy_exports
