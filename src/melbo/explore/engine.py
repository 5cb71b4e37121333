"""The explorer's one generation worker: a queue of requests, a cache, streamed tokens.

One thread owns the model. A :class:`GenRequest` asks for the completions of some prompts
unsteered and steered by one feature at ``scale × R`` (added to the residual stream entering
the source layer, as everywhere in melbo), optionally with the feature's input direction v
and/or output direction u ablated from every residual write (:func:`melbo.steering.interventions.ablate`).
Requests wait in order; each sees its place in the queue, then its tokens as they are
generated (melbo's own decode loop, :func:`melbo.generation.generate_steered` with
``on_text``), then the whole completions. A request whose listener goes away is dropped from
the queue, or stopped at its next token if it is running.

Completions are cached per (feature, scale, ablations, prompt, max_new_tokens, chat); greedy
decoding makes a cached completion the one a rerun would give. Unsteered and steered rows of
one request run as one batch when neither is cached and nothing is ablated.

Both are bounded, for an explorer left open for days: at most ``max_queue`` requests wait (one
more is refused with :class:`QueueFull`, which the app answers with 429), and the completions
made in the session are kept in a least-recently-used cache of ``cache_size`` entries (a slider
dragged over many scales makes a new entry for each). The completions the run brought
(discover's ``completions.json``, ``seen``) are kept apart and never evicted: they are bounded
by the run itself, and the search and score curves rely on them.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from melbo.errors import MAX_SCALE, check_prompts, check_scale
from melbo.features import Features

__all__ = ["CACHE_SIZE", "MAX_NEW_TOKENS", "MAX_QUEUE", "MAX_SCALE", "Engine", "GenRequest", "Job", "QueueFull"]

logger = logging.getLogger(__name__)

MAX_NEW_TOKENS = 256
MAX_PROMPTS = 32
MAX_PROMPT_CHARS = 4000
MAX_QUEUE = 16
"""Requests that may wait for the worker at once; one page has at most a few in flight, so a
full queue means a flood (or many users): the next request is refused, to be retried."""
CACHE_SIZE = 4096
"""Completions made in a session that are kept (least recently used first out). Each holds at
most a 4000-character prompt and a 256-token completion: ~30 MB at worst, a few MB in practice."""

#: (feature or None, scale, ablate v, ablate u, prompt, max_new_tokens, chat)
Key = tuple[int | None, float, bool, bool, str, int, str]
Listener = Callable[[dict[str, Any]], None]


class Cancelled(Exception):
    """Raised inside the decode loop to stop a request nobody listens to any more."""


class QueueFull(RuntimeError):
    """The worker's queue holds ``max_queue`` requests already; ``retry_after`` is a guess, in
    seconds, of when one will have left it."""

    def __init__(self, max_queue: int, retry_after: int) -> None:
        super().__init__(f"the explorer is busy: its queue is full ({max_queue} waiting for the model); "
                         f"retry in {retry_after} s")
        self.max_queue, self.retry_after = max_queue, retry_after


@dataclass(frozen=True)
class GenRequest:
    """Completions of ``prompts``, unsteered and with ``feature`` at ``scale`` × R (None: unsteered only)."""

    feature: int | None
    scale: float
    prompts: tuple[str, ...]
    ablate_v: bool = False
    ablate_u: bool = False
    max_new_tokens: int = 32

    def validate(self, n_features: int, has_targets: bool) -> None:
        k = self.feature
        if k is not None and (isinstance(k, bool) or not isinstance(k, int) or not 0 <= k < n_features):
            raise ValueError(f"feature {k!r} is out of range: 0 ≤ feature < {n_features}")
        check_scale("scale", self.scale, zero=True)  # 0: the unsteered baseline
        n = self.max_new_tokens
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_NEW_TOKENS:
            raise ValueError(f"max_new_tokens {n!r}: must be an integer in 1..{MAX_NEW_TOKENS}")
        if not self.prompts or len(self.prompts) > MAX_PROMPTS:
            raise ValueError(f"{len(self.prompts)} prompts: give 1..{MAX_PROMPTS}")
        check_prompts(self.prompts)
        for p in self.prompts:
            if not isinstance(p, str) or len(p) > MAX_PROMPT_CHARS:
                raise ValueError(f"each prompt must be a non-empty string of at most {MAX_PROMPT_CHARS} characters")
        if (self.ablate_v or self.ablate_u) and k is None:
            raise ValueError("ablation needs a feature")
        if self.ablate_u and not has_targets:
            raise ValueError("these features have no output directions u (their method learns none): cannot ablate u")

    @property
    def plain(self) -> bool:
        """Whether the steered side is the unsteered model (no feature, or scale 0 and no ablation)."""
        return self.feature is None or (self.scale == 0 and not self.ablate_v and not self.ablate_u)


@dataclass(eq=False)
class Job:
    request: GenRequest
    listener: Listener
    cancelled: threading.Event = field(default_factory=threading.Event)

    def cancel(self) -> None:
        self.cancelled.set()


class Engine:
    """The model, loaded once, behind one worker thread (module docstring).

    Parameters
    ----------
    model, tokenizer : the model the features were fitted on
    features : the run's features
    chat : prompt framing passed to :func:`melbo.generation.generate_steered`
    seen : completions known already, ``(feature or None, scale, prompt, max_new_tokens, chat) → text``
        (kept for the whole session)
    max_queue : requests that may wait at once; one more raises :class:`QueueFull`
    cache_size : completions made in the session that are kept (least recently used evicted first)
    """

    def __init__(self, model: nn.Module, tokenizer: Any, features: Features, *, chat: bool | str = "auto",
                 seen: dict[tuple[int | None, float, str, int, str], str] | None = None,
                 max_queue: int = MAX_QUEUE, cache_size: int = CACHE_SIZE) -> None:
        for name, value in (("max_queue", max_queue), ("cache_size", cache_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}={value!r}: must be an integer ≥ 1")
        self.model, self.tokenizer, self.features, self.chat = model, tokenizer, features, chat
        self.max_queue, self.cache_size = max_queue, cache_size
        self._seen: dict[Key, str] = {}
        for (k, sc, p, n, c), text in (seen or {}).items():
            self._seen[(k, 0.0 if k is None else float(sc), False, False, p, n, c)] = text
        self._cache: OrderedDict[Key, str] = OrderedDict()  # made in this session: LRU, at most cache_size
        self._seconds = 1.0  # recent seconds per request (for Retry-After)
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._queue: deque[Job] = deque()
        self._running: Job | None = None
        self._closed = False
        self._done = 0
        self._thread = threading.Thread(target=self._work, name="melbo-explore-worker", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ public

    def submit(self, request: GenRequest, listener: Listener) -> Job:
        """Queue ``request``; ``listener`` gets its events (from the worker thread)."""
        request.validate(self.features.n_factors, self.features.U is not None)
        job = Job(request, listener)
        with self._wake:
            if self._closed:
                raise RuntimeError("the explorer's worker is closed")
            if len(self._queue) >= self.max_queue:  # requests whose client left still count until purged
                self._queue = deque(j for j in self._queue if not j.cancelled.is_set())
            if len(self._queue) >= self.max_queue:
                wait = self._seconds * (len(self._queue) + 1)
                raise QueueFull(self.max_queue, max(1, min(60, math.ceil(wait))))
            ahead = len(self._queue) + (self._running is not None)
            self._queue.append(job)
            self._wake.notify()
        listener({"type": "queued", "ahead": ahead})
        return job

    def close(self, timeout: float | None = 10.0) -> None:
        with self._wake:
            self._closed = True
            for job in self._queue:
                job.cancel()
            self._queue.clear()
            if self._running is not None:
                self._running.cancel()
            self._wake.notify_all()
        self._thread.join(timeout)

    def status(self) -> dict[str, Any]:
        with self._lock:
            run = self._running
            return {"queued": len(self._queue), "running": None if run is None else _describe(run.request),
                    "done": self._done, "cached": len(self._seen) + len(self._cache), "max_queue": self.max_queue,
                    "cache_size": self.cache_size}

    def key(self, feature: int | None, scale: float, prompt: str, max_new_tokens: int,
            ablate_v: bool = False, ablate_u: bool = False) -> Key:
        if feature is None or (scale == 0 and not ablate_v and not ablate_u):
            return (None, 0.0, False, False, prompt, max_new_tokens, str(self.chat))
        return (feature, float(scale), bool(ablate_v), bool(ablate_u), prompt, max_new_tokens, str(self.chat))

    def cached(self, key: Key) -> str | None:
        with self._lock:
            text = self._seen.get(key)
            if text is None and (text := self._cache.get(key)) is not None:
                self._cache.move_to_end(key)
            return text

    def _store(self, key: Key, text: str) -> None:
        """Keep a completion made now (the caller holds the lock); the least recently used goes."""
        if key in self._seen:
            return
        self._cache[key] = text
        self._cache.move_to_end(key)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)

    def completions(self) -> list[tuple[Key, str]]:
        """Every completion known now: the run's, then the session's (a copy)."""
        with self._lock:
            return [*self._seen.items(), *self._cache.items()]

    def curve(self, feature: int, prompts: Sequence[str], max_new_tokens: int, ablate_v: bool = False,
              ablate_u: bool = False) -> list[dict[str, Any]]:
        """Behaviour score (:func:`melbo.evaluate.behaviours.vector_behaviour`) of ``feature``
        at every scale whose completions of all ``prompts`` are cached, by scale."""
        from melbo.evaluate.behaviours import vector_behaviour

        prompts = list(prompts)
        items = self.completions()
        plain = [self._cache_get(items, self.key(None, 0.0, p, max_new_tokens)) for p in prompts]
        if any(t is None for t in plain):
            return []
        by_scale: dict[float, dict[str, str]] = {}
        for (k, sc, av, au, p, n, c), text in items:
            if k == feature and av == ablate_v and au == ablate_u and n == max_new_tokens and c == str(self.chat):
                by_scale.setdefault(sc, {})[p] = text
        if not (ablate_v or ablate_u):
            by_scale.setdefault(0.0, dict(zip(prompts, plain)))  # type: ignore[arg-type]
        out = []
        for sc in sorted(by_scale):
            texts = [by_scale[sc].get(p) for p in prompts]
            if any(t is None for t in texts):
                continue
            b = vector_behaviour(texts, plain, prompts, vector=feature, scale=sc)  # type: ignore[arg-type]
            out.append({"scale": sc, "score": b.score, "rate": b.rate, "signature": b.signature})
        return out

    @staticmethod
    def _cache_get(items: list[tuple[Key, str]], key: Key) -> str | None:
        return next((t for k, t in items if k == key), None)

    # ------------------------------------------------------------------ worker

    def _work(self) -> None:
        torch.set_grad_enabled(False)
        while True:
            with self._wake:
                while not self._queue and not self._closed:
                    self._wake.wait()
                if self._closed:
                    return
                job = self._queue.popleft()
                if job.cancelled.is_set():
                    continue
                self._running = job
                waiting = list(self._queue)
            for i, other in enumerate(w for w in waiting if not w.cancelled.is_set()):
                _safe(other.listener, {"type": "queued", "ahead": i + 1})
            t0 = time.monotonic()
            try:
                self._run(job)
            except Cancelled:
                logger.debug("request cancelled: %s", _describe(job.request))
            except Exception as err:  # a bad request must not stop the worker
                logger.exception("generation failed: %s", _describe(job.request))
                _safe(job.listener, {"type": "error", "message": f"{type(err).__name__}: {err}"})
            finally:
                with self._lock:
                    self._running = None
                    self._done += 1
                    self._seconds = 0.8 * self._seconds + 0.2 * (time.monotonic() - t0)

    def _run(self, job: Job) -> None:
        req = job.request

        def emit(event: dict[str, Any]) -> None:
            _safe(job.listener, event)

        t0 = time.perf_counter()
        emit({"type": "start"})
        n = len(req.prompts)
        ukeys = [self.key(None, 0.0, p, req.max_new_tokens) for p in req.prompts]
        skeys = [self.key(req.feature, req.scale, p, req.max_new_tokens, req.ablate_v, req.ablate_u) for p in req.prompts]
        result: dict[str, list[str | None]] = {"unsteered": [self.cached(k) for k in ukeys],
                                               "steered": [self.cached(k) for k in skeys]}
        for side, texts in result.items():
            for i, t in enumerate(texts):
                if t is not None:
                    emit({"type": "text", "side": side, "prompt": i, "text": t, "final": True})
        miss_u = [i for i in range(n) if result["unsteered"][i] is None]
        miss_s = [] if req.plain else [i for i in range(n) if result["steered"][i] is None]
        total = (len(miss_u) + len(miss_s)) * req.max_new_tokens
        done = [0]

        def run(side_of: list[str], rows: list[int], vectors: torch.Tensor, ablate: torch.Tensor | None) -> None:
            """Generate ``rows`` (prompt indices) for each column of ``vectors`` (side ``side_of[j]``)."""
            from melbo.generation import generate_steered
            from melbo.steering.interventions import ablate as ablating

            def on_text(j: int, i: int, text: str) -> None:
                if job.cancelled.is_set():
                    raise Cancelled
                done[0] += 1
                emit({"type": "text", "side": side_of[j], "prompt": rows[i], "text": text,
                      "progress": min(1.0, done[0] / max(1, total))})

            with ExitStack() as stack:
                if ablate is not None:
                    stack.enter_context(ablating(self.model, ablate))
                out = generate_steered(self.model, self.tokenizer, [req.prompts[i] for i in rows], vectors,
                                       layer=self.features.source_layer, scale=float(req.scale),
                                       max_new_tokens=req.max_new_tokens, chat=self.chat, on_text=on_text)
            for j, texts in enumerate(out):
                keys = ukeys if side_of[j] == "unsteered" else skeys
                with self._lock:
                    for i, t in zip(rows, texts):
                        self._store(keys[i], t)
                for i, t in zip(rows, texts):
                    result[side_of[j]][i] = t
                    emit({"type": "text", "side": side_of[j], "prompt": i, "text": t, "final": True})

        d = self.features.d_model
        zero = torch.zeros(d, 1)
        if req.plain or req.feature is None:
            if miss_u:
                run(["unsteered"], miss_u, zero, None)
        else:
            v = (self.features.V[:, req.feature].to(torch.float32) * self.features.R)[:, None]  # (d, 1)
            dirs = [self.features.V[:, req.feature]] if req.ablate_v else []
            if req.ablate_u:
                dirs.append(self.features.require_targets("ablating u")[:, req.feature])
            ablate = torch.stack(dirs, dim=1).to(torch.float32) if dirs else None
            if miss_u and miss_u == miss_s and ablate is None:
                run(["unsteered", "steered"], miss_u, torch.cat([zero, v], dim=1), None)
            else:
                if miss_u:
                    run(["unsteered"], miss_u, zero, None)
                if miss_s:
                    run(["steered"], miss_s, v, ablate)
        if req.plain:
            result["steered"] = list(result["unsteered"])
        emit({"type": "done", "unsteered": result["unsteered"], "steered": result["steered"],
              "seconds": time.perf_counter() - t0, "generated": bool(miss_u or miss_s)})


def _describe(req: GenRequest) -> dict[str, Any]:
    return {"feature": req.feature, "scale": req.scale, "ablate_v": req.ablate_v, "ablate_u": req.ablate_u,
            "n_prompts": len(req.prompts), "max_new_tokens": req.max_new_tokens}


def _safe(listener: Listener, event: dict[str, Any]) -> None:
    try:
        listener(event)
    except Exception:  # pragma: no cover - a listener's failure is its own
        logger.debug("listener failed", exc_info=True)
