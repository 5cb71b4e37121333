"""A short supervised fine-tune with LoRA: loss on completion tokens only, checkpoints, resume.

Each (prompt, completion) pair is one chat exchange: the prompt is the user turn with the
generation prompt (the tokenizer's chat template, or melbo's ``User:/Assistant:`` frame),
the completion is the rest of the formatted conversation (the reply and the template's
end-of-turn marker, or ``eos`` in the plain frame). Only completion tokens carry loss, and
only their rows go through the unembedding: on Gemma-3 the 262k-row unembedding costs more
than the rest of the forward pass, so it is never applied to prompt or padding positions.

The adapters are peft LoRA (:mod:`melbo.models.adapters`), attached for the run and removed
after it. Batches are drawn from a schedule fixed by the seed, the learning rate is a function
of the step, and a checkpoint holds the adapters, the AdamW state and the losses, so a resumed
run reproduces an uninterrupted one.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from melbo.dtypes import resolve_dtype
from melbo.models.adapters import adapter_state, attached_lora, lora_config, set_adapter_state
from melbo.models.logits import logit_postprocess
from melbo.organisms.data import Example
from melbo.prompts import FALLBACK_TEMPLATE, format_chat
from melbo.store.io import read_file_set, read_json_file, write_file_set

__all__ = [
    "IGNORE",
    "FinetuneConfig",
    "FinetuneResult",
    "batch_schedule",
    "collate",
    "completion_loss",
    "encode_example",
    "finetune",
    "has_checkpoint",
]

logger = logging.getLogger(__name__)

IGNORE = -100
"""Label of tokens without loss (prompt and padding)."""


@dataclass
class FinetuneConfig:
    """The fine-tuning recipe (recorded with the organism)."""

    steps: int = 150
    batch_size: int = 8
    lr: float = 1e-3
    warmup: int = 5
    weight_decay: float = 0.0
    rank: int = 16
    alpha: float = 32.0
    max_grad_norm: float = 1.0
    max_length: int = 160
    max_completion_tokens: int = 24  # completion tokens with loss per example (each costs an unembedding row)
    autocast: str | None = None  # "bfloat16": matmuls in bf16 under torch.autocast (fp32 weights and adapters)
    checkpoint_every: int = 10
    seed: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        for name in ("steps", "batch_size", "rank", "max_length", "max_completion_tokens", "checkpoint_every"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name}={v!r}: must be an integer ≥ 1")
        if isinstance(self.warmup, bool) or not isinstance(self.warmup, int) or self.warmup < 0:
            raise ValueError(f"warmup={self.warmup!r}: must be an integer ≥ 0")
        for name in ("lr", "alpha", "max_grad_norm"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise ValueError(f"{name}={v!r}: must be a finite number > 0")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ValueError(f"weight_decay={self.weight_decay!r}: must be ≥ 0")
        if self.autocast not in (None, "bfloat16", "float16"):
            raise ValueError(f"autocast={self.autocast!r}: use None, 'bfloat16' or 'float16'")

    def lr_at(self, step: int) -> float:
        """Linear warm-up over ``warmup`` steps, then cosine decay to 10 % of ``lr``."""
        if step < self.warmup:
            return self.lr * (step + 1) / (self.warmup + 1)
        t = (step - self.warmup) / max(1, self.steps - self.warmup)
        return self.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(t, 1.0))))


@dataclass
class FinetuneResult:
    """The trained adapters (``adapter``: peft's state dict for ``config``) and the run's record."""

    adapter: dict[str, Tensor]
    config: Any  # peft.LoraConfig
    losses: list[float]
    steps_run: int  # steps run in this call (fewer than cfg.steps after a resume)
    seconds: float


# ---------------------------------------------------------------- data


def encode_example(
    tokenizer: Any, example: Example, *, max_length: int | None = None, max_completion_tokens: int | None = None
) -> tuple[list[int], list[int]]:
    """Token ids of one exchange and their labels (``IGNORE`` on the prompt).

    Returns ``(ids, labels)``, equal lengths; ``labels[t] = ids[t]`` on completion tokens.
    The completion keeps its first ``max_completion_tokens`` tokens, and a sequence longer
    than ``max_length`` loses completion tokens from its end; a prompt that alone fills
    ``max_length`` is an error.
    """
    user = [{"role": "user", "content": example.prompt}]
    prompt, template = format_chat(tokenizer, user)
    full, _ = format_chat(tokenizer, [*user, {"role": "assistant", "content": example.completion}],
                          add_generation_prompt=False)
    if not full.startswith(prompt):
        raise ValueError(
            f"the chat format of {example.prompt!r} with its reply does not start with the prompt's "
            "format (a template that rewrites earlier turns); cannot tell completion tokens apart"
        )
    fallback = template == FALLBACK_TEMPLATE
    p_ids = list(tokenizer(prompt, add_special_tokens=fallback)["input_ids"])
    c_ids = list(tokenizer(full[len(prompt):], add_special_tokens=False)["input_ids"])
    eos = getattr(tokenizer, "eos_token_id", None)
    if fallback and eos is not None:
        c_ids.append(int(eos))
    if not c_ids:
        raise ValueError(f"the completion of {example.prompt!r} tokenises to nothing")
    if max_length is not None:
        if len(p_ids) >= max_length:
            raise ValueError(f"prompt {example.prompt[:60]!r}… is {len(p_ids)} tokens, not shorter than max_length={max_length}")
        c_ids = c_ids[: max_length - len(p_ids)]
    if max_completion_tokens is not None:
        c_ids = c_ids[:max_completion_tokens]
    return p_ids + c_ids, [IGNORE] * len(p_ids) + c_ids


def collate(seqs: Sequence[tuple[list[int], list[int]]], pad_id: int) -> dict[str, Tensor]:
    """Right-pad a batch: ``input_ids``, ``attention_mask``, ``labels``, each of shape (B, T)."""
    T = max(len(ids) for ids, _ in seqs)
    B = len(seqs)
    input_ids = torch.full((B, T), int(pad_id), dtype=torch.long)
    mask = torch.zeros((B, T), dtype=torch.long)
    labels = torch.full((B, T), IGNORE, dtype=torch.long)
    for i, (ids, lab) in enumerate(seqs):
        input_ids[i, : len(ids)] = torch.tensor(ids)
        mask[i, : len(ids)] = 1
        labels[i, : len(lab)] = torch.tensor(lab)
    return {"input_ids": input_ids, "attention_mask": mask, "labels": labels}


def batch_schedule(n: int, steps: int, batch_size: int, seed: int) -> list[list[int]]:
    """Example indices per step: consecutive seeded permutations of ``range(n)``, cut in batches."""
    if n < 1:
        raise ValueError("no training examples")
    gen = torch.Generator().manual_seed(seed)
    stream: list[int] = []
    while len(stream) < steps * batch_size:
        stream.extend(torch.randperm(n, generator=gen).tolist())
    return [stream[i * batch_size : (i + 1) * batch_size] for i in range(steps)]


# ---------------------------------------------------------------- loss


def completion_loss(
    model: nn.Module, input_ids: Tensor, attention_mask: Tensor, labels: Tensor, *, autocast: str | None = None
) -> Tensor:
    """Mean next-token cross-entropy over the completion tokens (``labels != IGNORE``).

    Runs the decoder (``model.base_model``), then the unembedding on the positions that
    predict a completion token only: row ``t`` predicts ``labels[t + 1]``. ``autocast``
    ("bfloat16"/"float16") runs both under :func:`torch.autocast`; the loss is fp32.
    """
    targets = labels[:, 1:]  # (B, T-1)
    keep = targets != IGNORE  # (B, T-1)
    if not bool(keep.any()):
        raise ValueError("the batch has no completion tokens")
    decoder: Any = model.base_model
    dtype = resolve_dtype(autocast)
    with torch.autocast(input_ids.device.type, dtype=dtype, enabled=dtype is not None):
        out = decoder(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        h = out[0] if isinstance(out, tuple) else out.last_hidden_state  # (B, T, d)
        rows = h[:, :-1][keep]  # (N, d)
        head = model.get_output_embeddings()  # type: ignore[operator]
        logits = logit_postprocess(model)(head(rows))  # (N, V)
    return F.cross_entropy(logits.float(), targets[keep])


# ---------------------------------------------------------------- loop


ADAPTER_CHECKPOINT = "adapter.safetensors"
_OLD_CHECKPOINT = "lora.safetensors"  # melbo's own LoRA before peft: a different layout


def _save_checkpoint(ck: Path, adapter: dict[str, Tensor], opt: torch.optim.Optimizer, step: int, losses: list[float],
                     meta: dict[str, Any]) -> None:
    """Adapters, optimiser state and losses as one unit (:func:`melbo.store.io.write_file_set`)."""
    write_file_set(ck, {ADAPTER_CHECKPOINT: lambda p: save_file(adapter, str(p)),
                        "optimizer.pt": lambda p: torch.save(opt.state_dict(), p)},
                   {"step": step, "losses": losses, **meta})


def has_checkpoint(ck: str | os.PathLike[str]) -> bool:
    """Whether ``ck`` holds a fine-tune checkpoint to resume (its manifest exists)."""
    return (Path(ck) / "state.json").is_file()


def finetune(
    model: nn.Module,
    tokenizer: Any,
    examples: Sequence[Example],
    cfg: FinetuneConfig,
    *,
    checkpoint: str | os.PathLike[str] | None = None,
    resume: bool = False,
    meta: dict[str, Any] | None = None,
    progress: bool = False,
    on_step: Callable[[int, float], None] | None = None,
) -> FinetuneResult:
    """Train LoRA adapters on ``examples``; the model's own weights are not changed.

    Parameters
    ----------
    checkpoint : a directory for checkpoints (every ``cfg.checkpoint_every`` steps and at the end)
    resume : continue from ``checkpoint``; its recipe and ``meta`` must match
    meta : JSON-able facts the checkpoint must agree with on resume (e.g. a data hash)
    on_step : called as ``on_step(step, loss)`` after each step (1-based), after its checkpoint

    Returns
    -------
    FinetuneResult : the adapters (peft's state dict and ``LoraConfig``; save them with
        :func:`melbo.models.adapters.save_adapter`, merge them with
        :func:`~melbo.models.adapters.merge_lora_state`) and the loss of every step, those
        before a resume included.
    """
    import time

    cfg.validate()
    if not examples:
        raise ValueError("no training examples")
    device = next(model.parameters()).device
    pad = getattr(tokenizer, "pad_token_id", None)
    pad = int(pad if pad is not None else getattr(tokenizer, "eos_token_id", 0) or 0)
    seqs = [encode_example(tokenizer, e, max_length=cfg.max_length, max_completion_tokens=cfg.max_completion_tokens)
            for e in examples]
    schedule = batch_schedule(len(seqs), cfg.steps, cfg.batch_size, cfg.seed)
    ck = Path(checkpoint) if checkpoint is not None else None
    full_meta = {"recipe": asdict(cfg), **(meta or {})}
    state: dict[str, Any] = {}
    files: dict[str, Path] = {}
    if resume:
        if ck is None or not has_checkpoint(ck):
            raise FileNotFoundError(f"nothing to resume: no checkpoint in {str(ck)!r}")
        state0 = read_json_file(ck / "state.json", what="fine-tune checkpoint manifest")
        named = set((state0.get("files") or {}) if isinstance(state0, dict) else ())
        if ADAPTER_CHECKPOINT not in named and (_OLD_CHECKPOINT in named or (ck / _OLD_CHECKPOINT).is_file()) \
                and not (ck / ADAPTER_CHECKPOINT).is_file():
            raise ValueError(f"the checkpoint in {str(ck)!r} was written by melbo's LoRA before peft "
                             f"({_OLD_CHECKPOINT}); it cannot be resumed: start the build again without resume")
        state, files = read_file_set(ck, what="fine-tune checkpoint", legacy=(ADAPTER_CHECKPOINT, "optimizer.pt"))
        diff = sorted(k for k in set(full_meta) | (set(state) - {"step", "losses"}) if state.get(k) != full_meta.get(k))
        if diff:
            raise ValueError(f"the checkpoint in {str(ck)!r} was made with a different {', '.join(diff)}; "
                             f"checkpoint: {[state.get(k) for k in diff]}, now: {[full_meta.get(k) for k in diff]}")
    config = lora_config(model, rank=cfg.rank, alpha=cfg.alpha)
    was_training = model.training
    bar = None
    t0 = time.perf_counter()
    start, losses = 0, []
    try:
        model.eval()  # no dropout: short, deterministic fine-tunes
        with attached_lora(model, config, seed=cfg.seed) as peft_model:
            params = [p for p in peft_model.parameters() if p.requires_grad]  # the adapters, in module order
            opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
            if resume:
                assert ck is not None
                set_adapter_state(peft_model, load_file(str(files[ADAPTER_CHECKPOINT])))
                opt.load_state_dict(torch.load(files["optimizer.pt"], map_location=device, weights_only=True))
                start, losses = int(state["step"]), [float(x) for x in state["losses"]]
                logger.info("resuming the fine-tune at step %d of %d", start, cfg.steps)
            if progress and start < cfg.steps:
                from tqdm.auto import tqdm

                bar = tqdm(total=cfg.steps, initial=start, desc="fine-tune", unit="step")
            for step in range(start, cfg.steps):
                batch = {k: v.to(device) for k, v in collate([seqs[i] for i in schedule[step]], pad).items()}
                loss = completion_loss(model, **batch, autocast=cfg.autocast)
                opt.zero_grad(set_to_none=True)
                loss.backward()  # type: ignore[no-untyped-call]
                torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
                for g in opt.param_groups:
                    g["lr"] = cfg.lr_at(step)
                opt.step()
                losses.append(float(loss.detach()))
                done = step + 1
                if ck is not None and (done % cfg.checkpoint_every == 0 or done == cfg.steps):
                    _save_checkpoint(ck, adapter_state(peft_model), opt, done, losses, full_meta)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{losses[-1]:.3f}")
                if on_step is not None:
                    on_step(done, losses[-1])
            adapter = adapter_state(peft_model)
    finally:
        if bar is not None:
            bar.close()
        model.train(was_training)
    return FinetuneResult(adapter, config, losses, cfg.steps - start, time.perf_counter() - t0)
