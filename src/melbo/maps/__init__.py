"""The causal map Δ that every fit reads (``method.md`` §1): its protocol
(:mod:`melbo.maps.protocol`), Δ of a real model (:mod:`melbo.maps.transformer`) and a map with
planted factors for tests and the recovery benchmark (:mod:`melbo.maps.synthetic`)."""
