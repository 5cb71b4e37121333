"""Tiny random-init configs of real architectures, built in memory (no network)."""

from __future__ import annotations

import torch
import transformers as tf

VOCAB = 96

def _common(**kw: object) -> dict[str, object]:
    return dict(vocab_size=VOCAB, pad_token_id=0, bos_token_id=1, eos_token_id=2, **kw)


def _rope(**kw: object) -> dict[str, object]:
    return _common(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        **kw,
    )


CONFIGS = {
    "llama": lambda: tf.LlamaConfig(**_rope()),
    "mistral": lambda: tf.MistralConfig(**_rope(sliding_window=4)),
    "qwen2": lambda: tf.Qwen2Config(**_rope()),
    "qwen3": lambda: tf.Qwen3Config(**_rope(head_dim=8)),
    "gemma2": lambda: tf.Gemma2Config(**_rope(head_dim=8, sliding_window=4)),
    "gemma3": lambda: tf.Gemma3TextConfig(
        **_rope(head_dim=8, sliding_window=4, layer_types=["sliding_attention", "sliding_attention", "full_attention", "sliding_attention"])
    ),
    "gpt2": lambda: tf.GPT2Config(**_common(n_embd=32, n_layer=4, n_head=4, n_positions=128)),
    "gpt_neox": lambda: tf.GPTNeoXConfig(
        **_common(hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4, max_position_embeddings=128)
    ),
    "phi3": lambda: tf.Phi3Config(**_rope()),
    "olmo2": lambda: tf.Olmo2Config(**_rope()),
}

FAMILIES = tuple(CONFIGS)


def tiny_model(
    family: str, *, seed: int = 0, dtype: torch.dtype = torch.float32, attn: str = "eager", vocab: int | None = None
) -> torch.nn.Module:
    """A seeded random-init causal LM of ``family`` in eval mode."""
    cfg = CONFIGS[family]()
    if vocab is not None:
        cfg.vocab_size = vocab
    cfg._attn_implementation = attn
    torch.manual_seed(seed)
    try:
        model = tf.AutoModelForCausalLM.from_config(cfg, dtype=dtype)
    except ValueError:  # this family has no such attention kernel (e.g. Gemma2 + sdpa)
        cfg._attn_implementation = "eager"
        torch.manual_seed(seed)
        model = tf.AutoModelForCausalLM.from_config(cfg, dtype=dtype)
    model.eval()
    return model
