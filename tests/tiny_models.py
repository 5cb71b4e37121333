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
        # RoPE has no learned positions; the context only bounds the prompts melbo accepts
        # (the tiny tokenizer spells words letter by letter, so chat prompts run to a few hundred).
        max_position_embeddings=1024,
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
    # Mixture-of-experts families: 4 experts, top-2 routing. Qwen2-MoE adds a gated shared
    # expert and a dense MLP at layer 2 (mlp_only_layers), so layers differ in kind.
    "mixtral": lambda: tf.MixtralConfig(**_rope(num_local_experts=4, num_experts_per_tok=2, sliding_window=4)),
    "qwen2_moe": lambda: tf.Qwen2MoeConfig(
        **_rope(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=16, shared_expert_intermediate_size=24, mlp_only_layers=[2])
    ),
    "qwen3_moe": lambda: tf.Qwen3MoeConfig(
        **_rope(head_dim=8, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=16, norm_topk_prob=True)
    ),
    "olmoe": lambda: tf.OlmoeConfig(**_rope(num_experts=4, num_experts_per_tok=2)),
}
MOE_FAMILIES = ("mixtral", "qwen2_moe", "qwen3_moe", "olmoe")

FAMILIES = tuple(CONFIGS)


def tiny_model(
    family: str, *, seed: int = 0, dtype: torch.dtype = torch.float32, attn: str = "eager", vocab: int | None = None
) -> torch.nn.Module:
    """A seeded random-init causal LM of ``family`` in eval mode."""
    cfg = CONFIGS[family]()
    if vocab is not None:
        cfg.vocab_size = vocab
    cfg._attn_implementation = attn
    if family in MOE_FAMILIES and dtype == torch.float64:
        # transformers' default experts kernel (grouped_mm) has no float64 kernel on CPU;
        # float32 models keep it, so both expert implementations are tested.
        cfg._experts_implementation = "eager"
    torch.manual_seed(seed)
    try:
        model = tf.AutoModelForCausalLM.from_config(cfg, dtype=dtype)
    except ValueError:  # this family has no such attention kernel (e.g. Gemma2 + sdpa)
        cfg._attn_implementation = "eager"
        torch.manual_seed(seed)
        model = tf.AutoModelForCausalLM.from_config(cfg, dtype=dtype)
    model.eval()
    return model


class ListMoE(torch.nn.Module):
    """A mixture-of-experts MLP block in the transformers-4 layout: experts as a ModuleList of
    gated MLPs (``gate_proj``, ``up_proj``, ``down_proj``), softmax top-k routing and a
    sigmoid-gated shared expert — to stand in for ``layer.mlp`` of a tiny dense model."""

    def __init__(self, d: int, d_expert: int = 16, n_experts: int = 4, top_k: int = 2) -> None:
        super().__init__()

        def expert() -> torch.nn.Module:
            m = torch.nn.Module()
            m.gate_proj = torch.nn.Linear(d, d_expert, bias=False)
            m.up_proj = torch.nn.Linear(d, d_expert, bias=False)
            m.down_proj = torch.nn.Linear(d_expert, d, bias=False)
            return m

        self.top_k = top_k
        self.gate = torch.nn.Linear(d, n_experts, bias=False)
        self.experts = torch.nn.ModuleList([expert() for _ in range(n_experts)])
        self.shared_expert = expert()
        self.shared_expert_gate = torch.nn.Linear(d, 1, bias=False)

    @staticmethod
    def _mlp(e: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        return e.down_proj(torch.nn.functional.silu(e.gate_proj(x)) * e.up_proj(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.gate(x)  # (B, T, experts)
        weights, chosen = torch.topk(logits.softmax(-1), self.top_k, dim=-1)
        out = torch.zeros_like(x)
        for j, e in enumerate(self.experts):
            w = (weights * (chosen == j)).sum(-1, keepdim=True)  # 0 where j was not chosen
            out = out + w * self._mlp(e, x)
        out = out + torch.sigmoid(self.shared_expert_gate(x)) * self._mlp(self.shared_expert, x)
        return out


def list_moe_llama(seed: int = 0) -> torch.nn.Module:
    """The tiny Llama with every layer's MLP replaced by a :class:`ListMoE` (seeded)."""
    model = tiny_model("llama", seed=seed)
    torch.manual_seed(seed + 1)
    for layer in model.model.layers:
        layer.mlp = ListMoE(model.config.hidden_size)
    return model.eval()
