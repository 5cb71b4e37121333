"""What melbo keeps on disk: files that cannot half-exist and bounded readers of user files
(:mod:`melbo.store.io`), the shared cache and its lock (:mod:`melbo.store.cache`), torch.compile's
cache (:mod:`melbo.store.compile_cache`) and how melbo recognises its own outputs, which
``--force`` may replace (:mod:`melbo.store.outputs`)."""
