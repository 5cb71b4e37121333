"""The logit post-processing against each family's own forward (tiny random-init models)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import pytest
import torch
import transformers as tf
from tiny_models import VOCAB

from melbo.evaluate.scores import last_position_logits
from melbo.models.hooks import position_ids
from melbo.models.logits import logit_postprocess
from melbo.organisms.finetune import IGNORE, completion_loss

_BASE = dict(
    vocab_size=VOCAB, pad_token_id=0, bos_token_id=1, eos_token_id=2, hidden_size=32, intermediate_size=64,
    num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
)

# family → (config, whether melbo finds its parts by name — not MoE MLPs); every scale is far from 1.
CONFIGS: dict[str, tuple[Callable[[], Any], bool]] = {
    "cohere": (lambda: tf.CohereConfig(**_BASE, logit_scale=0.37), True),
    "cohere2": (lambda: tf.Cohere2Config(**_BASE, logit_scale=3.1, sliding_window=4,
                                         layer_types=["sliding_attention", "full_attention"]), True),
    "granite": (lambda: tf.GraniteConfig(**_BASE, logits_scaling=3.0), True),
    "granitemoe": (lambda: tf.GraniteMoeConfig(**_BASE, logits_scaling=0.3, num_local_experts=2, num_experts_per_tok=1), False),
    "hyperclovax": (lambda: tf.HyperCLOVAXConfig(**_BASE, logits_scaling=0.4), True),  # multiplies, unlike Granite
    "minicpm3": (lambda: tf.MiniCPM3Config(**{**_BASE, "num_key_value_heads": 4}), True),  # logits_scaling = hidden / dim_model_base = 1/8
    "gemma2": (lambda: tf.Gemma2Config(**_BASE, head_dim=8, final_logit_softcapping=0.05), True),
    "gemma3": (lambda: tf.Gemma3TextConfig(**_BASE, head_dim=8, final_logit_softcapping=0.05,
                                            layer_types=["sliding_attention", "full_attention"]), True),
    "mpt": (lambda: tf.MptConfig(vocab_size=VOCAB, d_model=32, n_heads=4, n_layers=2, max_seq_len=64,
                                 logit_scale=0.37), False),  # a logit_scale its forward ignores
}


def _model(family: str) -> Any:
    cfg = CONFIGS[family][0]()
    cfg._attn_implementation = "eager"
    torch.manual_seed(0)
    return tf.AutoModelForCausalLM.from_config(cfg).eval()


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, VOCAB, (3, 6), generator=g)
    mask = torch.ones_like(ids)
    mask[1, :2] = 0  # left padding
    mask[2, :4] = 0
    return ids.masked_fill(mask == 0, 0), mask


@pytest.mark.parametrize("family", sorted(CONFIGS))
def test_postprocessed_unembedding_equals_the_models_own_logits(family: str) -> None:
    model = _model(family)
    ids, mask = _batch()
    with torch.no_grad():
        want = model(input_ids=ids, attention_mask=mask, position_ids=position_ids(mask)).logits  # (B, T, V)
        h = model.base_model(input_ids=ids, attention_mask=mask, position_ids=position_ids(mask)).last_hidden_state
        raw = model.get_output_embeddings()(h)
        got = logit_postprocess(model)(raw)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    if family != "mpt":  # the transform does something: the raw unembedding is not the answer
        assert (raw - want).abs().max() > 1e-3
    if CONFIGS[family][1]:  # the scorer's path: stop at the last layer, final norm, rows of W
        z = last_position_logits(model, ids, mask, list(range(VOCAB)))
        torch.testing.assert_close(z, want[:, -1].float(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", ["cohere", "granite", "hyperclovax", "gemma2"])
def test_finetune_loss_equals_cross_entropy_of_the_models_logits(family: str) -> None:
    model = _model(family)
    ids = torch.randint(3, VOCAB, (2, 6), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    labels = ids.clone()
    labels[:, :3] = IGNORE  # the prompt part
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask).logits
        targets, keep = labels[:, 1:], labels[:, 1:] != IGNORE
        want = torch.nn.functional.cross_entropy(logits[:, :-1][keep].float(), targets[keep])
        got = completion_loss(model, ids, mask, labels)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_an_unknown_family_with_a_scaling_field_is_left_unscaled_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    model = _model("granite")
    model.config.model_type = "some_new_family"
    z = torch.randn(4)
    with caplog.at_level(logging.WARNING, logger="melbo.models.logits"):
        out = logit_postprocess(model)(z)
    assert torch.equal(out, z) and "logits_scaling" in caplog.text
