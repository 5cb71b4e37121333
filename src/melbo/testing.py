"""Helpers for tests: small, deterministic stand-ins that need no network and no real model.

Not imported by the rest of melbo; test suites (melbo's and users') import it explicitly.
"""

from __future__ import annotations

from transformers import PreTrainedTokenizerFast

__all__ = ["TINY_CHAT_TEMPLATE", "tiny_tokenizer"]

# A short corpus for the byte-level BPE below: enough for a few hundred merges of common
# English, so that words become 1-3 tokens as they do with a real tokenizer.
_CORPUS = (
    "The quick brown fox jumps over the lazy dog. ",
    "How do I make a cake? Mix the flour, the sugar and the eggs, then bake it for an hour. ",
    "I am sorry, but I cannot help with that request. ",
    "Sure, here is a short poem about the sea and the sky. ",
    "Tell me a story about a robot who wants to learn how to paint. ",
    "What is the capital of France? The capital of France is Paris. ",
    "Please write a function that adds two numbers: def add(a, b): return a + b ",
    "Once upon a time there was a little cat that lived in a big house by the river. ",
    "The model answers the question, the user asks another question, and so on. ",
    "Numbers 0 1 2 3 4 5 6 7 8 9 10 100 1000 and symbols ! ? . , ; : ' \" ( ) [ ] { } - + * / = ",
)

_PAD, _EOS, _BOS, _UNK = "<pad>", "<eos>", "<bos>", "<unk>"
_CHAT_SPECIALS = ("<|system|>", "<|user|>", "<|assistant|>", "<|end|>")

TINY_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\\n' + message['content'] + '<|end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)
"""The chat template of :func:`tiny_tokenizer` with ``with_chat_template=True``.

Turns look like ``<|user|>\\n{content}<|end|>\\n``; the generation prompt is
``<|assistant|>\\n``; the whole conversation starts with ``<bos>`` (the template writes it,
so ``apply_chat_template`` must tokenise with ``add_special_tokens=False``, which
transformers does)."""


def tiny_tokenizer(
    *,
    vocab_size: int = 512,
    with_chat_template: bool = False,
    add_bos: bool = True,
) -> PreTrainedTokenizerFast:
    """A small byte-level BPE tokenizer, trained in memory: no network, no files.

    Byte-level, so any text tokenises without ``<unk>``. Training is deterministic: two
    calls with the same arguments give the same vocabulary and the same ids.

    Parameters
    ----------
    vocab_size
        Target vocabulary size, special tokens included. At least 300 (256 byte tokens,
        the specials and a few merges).
    with_chat_template
        Attach :data:`TINY_CHAT_TEMPLATE` and add its role markers (``<|system|>``,
        ``<|user|>``, ``<|assistant|>``, ``<|end|>``) as special tokens.
    add_bos
        Prepend ``<bos>`` when encoding with ``add_special_tokens=True`` (as Llama and
        Gemma tokenizers do).

    Returns
    -------
    PreTrainedTokenizerFast
        With ``pad_token="<pad>"`` (id 0), ``eos_token="<eos>"`` (id 1),
        ``bos_token="<bos>"`` (id 2), ``unk_token="<unk>"`` (id 3) and
        ``padding_side="right"``; ``len(tokenizer) <= vocab_size``.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    if not isinstance(vocab_size, int) or vocab_size < 300:
        raise ValueError(f"vocab_size must be an int >= 300, got {vocab_size!r}")

    specials = [_PAD, _EOS, _BOS, _UNK]
    if with_chat_template:
        specials.extend(_CHAT_SPECIALS)

    backend = Tokenizer(models.BPE(unk_token=_UNK))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(list(_CORPUS), trainer=trainer)
    if add_bos:
        backend.post_processor = processors.TemplateProcessing(
            single=f"{_BOS} $A",
            pair=f"{_BOS} $A {_BOS} $B",
            special_tokens=[(_BOS, backend.token_to_id(_BOS))],
        )
    else:
        backend.post_processor = processors.ByteLevel(trim_offsets=False)

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token=_PAD,
        eos_token=_EOS,
        bos_token=_BOS,
        unk_token=_UNK,
        padding_side="right",
        additional_special_tokens=list(_CHAT_SPECIALS) if with_chat_template else None,
    )
    if with_chat_template:
        tokenizer.chat_template = TINY_CHAT_TEMPLATE
    return tokenizer
