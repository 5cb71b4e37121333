"""Batched, padding-correct text generation (greedy or seeded sampling) for steered models.

Both entry points run melbo's own decode loop (:func:`melbo.generation.decode.decode`) over the
model's forward and KV cache, on left-padded prompts:

* :func:`generate` — completions of prompts, unsteered (hooks the caller holds apply);
* :func:`generate_steered` — completions of every prompt under every steering vector, as one
  job: (vector, prompt) pairs are folded into the batch, row b steered by its own vector at
  the input of ``layers[layer]``, at every position, prompt and new tokens alike. Rows run in
  chunks sized by a memory budget; rows that hit an end-of-sequence token or a stop string
  leave the batch. The prompt's unsteered prefix — the key/value cache of the layers below
  ``layer``, which never see the steering — is computed once per prompt and shared by every
  vector (:mod:`melbo.generation.prefix`).

Greedy decoding in fp32 gives the tokens ``model.generate`` gives steering one vector at a
time (tested on several families, left padding). Sampling draws one uniform per row and step
from the row's own seed (derived from ``seed``, the vector and the prompt), so a completion
does not depend on the other rows of its batch or on the chunking.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import torch
from torch import Tensor, nn

from melbo.errors import check_prompts, check_scale
from melbo.generation.decode import DecodeSettings, Forward, decode, model_forward, new_cache
from melbo.prompts.batch import PromptBatch, PromptLike, _max_context, build_prompts

__all__ = ["default_generation_budget", "generate", "generate_steered"]

logger = logging.getLogger(__name__)

_SEED_STRIDE = 1_000_003


def default_generation_budget(device: torch.device) -> int:
    """Bytes one chunk of rows may use for its cache, logits and activations: 1 GiB on the
    CPU, a quarter of the free memory on a GPU.

    On the CPU larger chunks stop paying early: on 2 cores, Gemma-3-270M (fp32, 32 new
    tokens) ran at 142, 178 and 190 tokens/s with 32, 64 and 128 rows a chunk, and slower
    with the ~300 rows of a 2 GiB budget; 1 GiB gives it ~150 rows."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return max(free // 4, 1 << 28)
    return 1 << 30


def _check_args(
    max_new_tokens: object, batch_size: object, do_sample: object, temperature: object, seed: object,
    stop: object, memory_budget: object,
) -> tuple[str, ...]:
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens={max_new_tokens!r}: must be an integer ≥ 1")
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1):
        raise ValueError(f"batch_size={batch_size!r}: must be an integer ≥ 1 (or None: sized by memory_budget)")
    if memory_budget is not None and (
        isinstance(memory_budget, bool) or not isinstance(memory_budget, int) or memory_budget < 1
    ):
        raise ValueError(f"memory_budget={memory_budget!r}: must be a number of bytes ≥ 1 (or None)")
    if not isinstance(do_sample, bool):
        raise TypeError(f"do_sample={do_sample!r}: must be True or False")
    if isinstance(temperature, bool) or not isinstance(temperature, int | float) or not (
        math.isfinite(temperature) and temperature > 0
    ):
        raise ValueError(f"temperature={temperature!r}: must be a finite number > 0")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed={seed!r}: must be an integer")
    if stop is None:
        return ()
    stops = (stop,) if isinstance(stop, str) else stop
    if not isinstance(stops, Sequence) or not all(isinstance(s, str) and s for s in stops):
        raise ValueError(f"stop={stop!r}: must be a non-empty string or a list of non-empty strings")
    return tuple(stops)


def _eos_ids(model: nn.Module, tokenizer: Any) -> frozenset[int]:
    cfg = getattr(model, "generation_config", None)
    eos = getattr(cfg, "eos_token_id", None)
    if eos is None:
        eos = getattr(tokenizer, "eos_token_id", None)
    if eos is None:
        return frozenset()
    return frozenset([int(eos)] if isinstance(eos, int) else [int(e) for e in eos])


def _cut(text: str, stops: tuple[str, ...]) -> tuple[str, bool]:
    cut = min((i for i in (text.find(s) for s in stops) if i >= 0), default=-1)
    return (text, False) if cut < 0 else (text[:cut], True)


def _row_bytes(model: nn.Module, T: int, max_new_tokens: int) -> int:
    """Bytes one generated row holds at most: its key/value cache, the logits of one step
    (with their softmax and CDF when sampling) and the prompt's activations in the prefill."""
    cfg = getattr(model, "config", None)
    get = lambda *names, default: next((int(v) for n in names if isinstance(v := getattr(cfg, n, None), int)), default)  # noqa: E731
    d = get("hidden_size", "n_embd", "d_model", default=1024)
    n_layers = get("num_hidden_layers", "n_layer", default=32)
    heads = get("num_attention_heads", "n_head", default=max(d // 64, 1))
    head_dim = get("head_dim", default=max(d // heads, 1))
    kv = get("num_key_value_heads", default=heads)
    vocab = get("vocab_size", default=32000)
    ff = get("intermediate_size", "n_inner", default=4 * d)
    elem = next(model.parameters()).element_size()
    cache = 2 * n_layers * kv * head_dim * (T + max_new_tokens) * elem
    logits = 4 * vocab * 4
    prefill = T * (4 * d + 3 * ff + heads * (T + head_dim)) * 4
    return cache + logits + prefill


def _chunk_rows(model: nn.Module, T: int, max_new_tokens: int, batch_size: int | None, memory_budget: int | None) -> int:
    if batch_size is not None:
        return batch_size
    budget = memory_budget if memory_budget is not None else default_generation_budget(next(model.parameters()).device)
    return max(1, budget // _row_bytes(model, T, max_new_tokens))


def _texts(tokenizer: Any, tokens: list[list[int]], stops: tuple[str, ...]) -> list[str]:
    return [_cut(tokenizer.decode(t, skip_special_tokens=True), stops)[0] for t in tokens]


def _stop_rule(tokenizer: Any, stops: tuple[str, ...]) -> Any:
    if not stops:
        return None
    tail = max(map(len, stops))

    def stopped(row: int, toks: list[int]) -> bool:
        # a stop string can only be completed by the newest token: look at the end of the
        # text first, and confirm on the whole text (decoding a window may differ at its start)
        text = tokenizer.decode(toks[-(tail + 1) :], skip_special_tokens=True)
        return any(s in text for s in stops) and _cut(tokenizer.decode(toks, skip_special_tokens=True), stops)[1]

    return stopped


def _streamer(
    tokenizer: Any, stops: tuple[str, ...], on_text: Callable[[int, int, str], None], start: int, n: int
) -> Callable[[int, list[int]], None]:
    """The decode loop's ``on_token`` for the chunk starting at pair ``start``: the row's text
    so far (stop strings cut off, as in the result) to ``on_text(vector, prompt, text)``."""

    def on_token(row: int, toks: list[int]) -> None:
        pair = start + row
        on_text(pair // n, pair % n, _cut(tokenizer.decode(toks, skip_special_tokens=True), stops)[0])

    return on_token


def _trim(ids: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Drop the columns that are padding in every row."""
    keep = int(mask.sum(dim=0).nonzero().min())
    return ids[:, keep:], mask[:, keep:]


def _row_steering(model: nn.Module, layer: int, vec: Tensor, access: Any, rows: Tensor) -> Any:
    from melbo.steering.interventions import row_steering

    return row_steering(model, layer, vec[rows.to(vec.device)], access=access)


def _steered_forward(base: Forward, steering: Callable[[Tensor], Any]) -> Forward:
    """``base`` with rows ``rows`` steered (``steering(rows)``, a context manager) during the call."""

    def fwd(ids: Tensor, mask: Tensor, pos: Tensor, cache: Any, rows: Tensor) -> Tensor:
        with steering(rows):
            return base(ids, mask, pos, cache, rows)

    return fwd


def _run(
    model: nn.Module, tokenizer: Any, batch: PromptBatch, vectors: Tensor | None, *, layer: int | None,
    access: Any, max_new_tokens: int, do_sample: bool, temperature: float, seed: int, stops: tuple[str, ...],
    batch_size: int | None, memory_budget: int | None, progress: bool, share_prefix: bool,
    on_text: Callable[[int, int, str], None] | None = None,
) -> list[str]:
    """Completions of every (vector, prompt) pair, vector-major (pair p = vector p // n,
    prompt p % n); ``vectors`` (k, d) already scaled, or None: one unsteered pass.
    ``on_text(vector, prompt, text so far)`` is called after every new token of a pair."""
    from melbo.generation.prefix import shared_prefix

    n = batch.n
    k = 1 if vectors is None else int(vectors.shape[0])
    total = k * n
    context = _max_context(getattr(model, "config", None))
    longest = int(batch.lengths.max())
    if context is not None and longest + max_new_tokens > context:
        from melbo.errors import UserError

        raise UserError(f"max_new_tokens={max_new_tokens} (--max-new-tokens): the longest prompt is {longest} tokens and "
                        f"the model's context {context}, so at most {max(context - longest, 0)} new tokens fit")
    eos = _eos_ids(model, tokenizer)
    stopped = _stop_rule(tokenizer, stops)
    rows_per_chunk = _chunk_rows(model, int(batch.input_ids.shape[1]), max_new_tokens, batch_size, memory_budget)
    prefix = None
    if vectors is not None and share_prefix and layer is not None and layer > 0:
        prefix = shared_prefix(model, batch.input_ids, batch.attention_mask, layer, access=access)
    logger.info("generating %d completions (%d vectors × %d prompts, %d new tokens) in chunks of %d rows",
                total, k, n, max_new_tokens, rows_per_chunk)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, desc="melbo: steered generation", unit="completion")
    texts: list[str] = []
    for start in range(0, total, rows_per_chunk):
        pairs = torch.arange(start, min(total, start + rows_per_chunk))
        pi, vi = pairs % n, pairs // n
        seeds = [seed * _SEED_STRIDE * _SEED_STRIDE + int(j) * _SEED_STRIDE + int(i) for j, i in zip(vi, pi, strict=True)]
        settings = DecodeSettings(max_new_tokens=max_new_tokens, eos_ids=eos, do_sample=do_sample,
                                  temperature=float(temperature), row_seeds=seeds, stopped=stopped,
                                  on_token=None if on_text is None else _streamer(tokenizer, stops, on_text, start, n))
        device = batch.input_ids.device
        ids, mask = batch.input_ids[pi.to(device)], batch.attention_mask[pi.to(device)]
        if vectors is None or layer is None:
            tokens = decode(model_forward(model), *_trim(ids, mask), settings, cache=new_cache(model))
        else:
            chunk_vec = vectors[vi.to(vectors.device)]
            steering = partial(_row_steering, model, layer, chunk_vec, access)
            fwd = _steered_forward(model_forward(model), steering)
            if prefix is not None:  # the shared prefix has the full padded width
                cache, first = prefix.prefill(fwd, pi, steering)
                tokens = decode(fwd, ids, mask, settings, cache=cache, first_logits=first)
            else:
                tokens = decode(fwd, *_trim(ids, mask), settings, cache=new_cache(model))
        texts.extend(_texts(tokenizer, tokens, stops))
        if bar is not None:
            bar.update(len(pairs))
    if bar is not None:
        bar.close()
    return texts


def generate(
    model: nn.Module,
    tokenizer: Any,
    prompts: Sequence[PromptLike],
    *,
    max_new_tokens: int = 32,
    chat: bool | str = "auto",
    system_prompt: str | None = None,
    do_sample: bool = False,
    temperature: float = 1.0,
    seed: int = 0,
    batch_size: int | None = None,
    stop: str | Sequence[str] | None = None,
    memory_budget: int | None = None,
) -> list[str]:
    """Complete each prompt; returns only the generated text.

    Prompts are left-padded together; greedy by default (the tokens ``model.generate`` gives),
    or seeded sampling (``do_sample``, ``temperature``, ``seed``: reproducible, and a prompt's
    completion does not depend on the other prompts). A completion ends at an end-of-sequence
    token or at the first of the ``stop`` strings, which is cut off. ``batch_size``: rows
    per chunk (default: as many as ``memory_budget`` bytes hold, 1 GiB on the CPU).
    """
    stops = _check_args(max_new_tokens, batch_size, do_sample, temperature, seed, stop, memory_budget)
    prompts = check_prompts(prompts, empty_ok=True)
    if not prompts:
        return []
    device = next(model.parameters()).device
    batch = build_prompts(tokenizer, prompts, chat=chat, system_prompt=system_prompt,  # type: ignore[arg-type]
                          positions=1, padding_side="left", model_config=getattr(model, "config", None)).to(device)
    return _run(model, tokenizer, batch, None, layer=None, access=None, max_new_tokens=max_new_tokens,
                do_sample=do_sample, temperature=temperature, seed=seed, stops=stops, batch_size=batch_size,
                memory_budget=memory_budget, progress=False, share_prefix=False)


def generate_steered(
    model: nn.Module,
    tokenizer: Any,
    prompts: Sequence[PromptLike],
    vectors: Tensor,
    *,
    layer: int,
    scale: float = 1.0,
    max_new_tokens: int = 32,
    chat: bool | str = "auto",
    system_prompt: str | None = None,
    do_sample: bool = False,
    temperature: float = 1.0,
    seed: int = 0,
    batch_size: int | None = None,
    progress: bool = False,
    access: Any = None,
    stop: str | Sequence[str] | None = None,
    memory_budget: int | None = None,
    share_prefix: bool = True,
    on_text: Callable[[int, int, str], None] | None = None,
) -> list[list[str]]:
    """Completions of every prompt steered by every column of ``vectors``, as one batched job.

    Row b of the batch is one (vector, prompt) pair; it gets ``scale * vectors[:, j]`` added
    to the residual stream entering ``layers[layer]`` at every position, prompt and generated
    tokens alike (:func:`melbo.steering.interventions.row_steering`), exactly as
    :func:`melbo.steering.interventions.steer` adds one vector to a whole batch. Greedy decoding gives
    the tokens of steering one vector at a time with ``model.generate``.

    Parameters
    ----------
    vectors : Tensor, shape (d_model, k)
    batch_size : rows per chunk; default: as many as ``memory_budget`` bytes hold
        (:func:`default_generation_budget`).
    stop : a completion ends at the first of these strings (cut off).
    share_prefix : compute each prompt's cache below ``layer`` once for all vectors
        (:mod:`melbo.generation.prefix`); off: every row runs the whole model.
    on_text : streaming: ``on_text(j, i, text)`` after every new token of vector j on prompt i,
        with the completion so far (a stop string cut off); called from this thread.

    Returns
    -------
    list of k lists (one per column of ``vectors``) of ``len(prompts)`` completions (generated
    text only).
    """
    from melbo.models.access import resolve_access
    from melbo.steering.interventions import check_vectors

    stops = _check_args(max_new_tokens, batch_size, do_sample, temperature, seed, stop, memory_budget)
    acc = resolve_access(model, access)
    acc.check_layer(layer)
    check_vectors(vectors, acc.d_model)
    check_scale("scale", scale, zero=True, bound=None)  # any finite multiple; the commands bound it
    prompts = check_prompts(prompts, empty_ok=True)
    n, k = len(prompts), int(vectors.shape[1])
    if n == 0 or k == 0:
        return [[] for _ in range(k)]
    device = next(model.parameters()).device
    batch = build_prompts(tokenizer, prompts, chat=chat, system_prompt=system_prompt,  # type: ignore[arg-type]
                          positions=1, padding_side="left", model_config=getattr(model, "config", None)).to(device)
    vec = (vectors.detach().to(torch.float32) * float(scale)).T.to(device)  # (k, d)
    texts = _run(model, tokenizer, batch, vec, layer=layer, access=acc, max_new_tokens=max_new_tokens,
                 do_sample=do_sample, temperature=temperature, seed=seed, stops=stops, batch_size=batch_size,
                 memory_budget=memory_budget, progress=progress, share_prefix=share_prefix, on_text=on_text)
    return [texts[j * n : (j + 1) * n] for j in range(k)]
