"""A small byte-level BPE tokenizer with a chat template, for the tiny models (which have none).

``make_tiny_tokenizer(dir)`` writes ``tokenizer.json`` (trained with the ``tokenizers`` library on a text
generated from a fixed seed, so the same bytes every time) and ``tokenizer_config.json`` with the bos/eos
tokens and a Jinja ``chat_template``, as Hugging Face checkpoints ship them. Special tokens come first:
``<|bos|>`` is id 0 and ``<|eos|>`` id 1, the tiny model's bos_token_id and eos_token_id. Every id of the
vocabulary decodes to something (byte-level: any id sequence is valid text after UTF-8 repair).

CLI: ``python -m helix make-tiny-model DIR --tokenizer``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

__all__ = ["CHAT_TEMPLATE", "SPECIAL_TOKENS", "make_tiny_tokenizer"]

SPECIAL_TOKENS = ["<|bos|>", "<|eos|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]

# One turn: <|role|>content<|end|>; the generation prompt opens the assistant's turn.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] not in ['system', 'user', 'assistant'] %}"
    "{{ raise_exception('unknown role: ' + message['role']) }}"
    "{% endif %}"
    "<|{{ message['role'] }}|>{{ message['content'] }}<|end|>"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)

_SYLLABLES = "ka lo mi ne ru sa ti vo ze ha ju pe qu xi ba do fe gi".split()
_TEXT = (
    "Helix shards the KV cache along the sequence across the context-parallel ranks. "
    "Each rank computes partial attention over its own shard, and one all-to-all exchanges the partial "
    "outputs with their log-sum-exp; an exact merge recovers full attention. Hello, world! 0123456789 "
)


def _corpus(seed: int, lines: int = 400) -> list[str]:
    rng = np.random.default_rng(seed)
    out = [_TEXT] * 8
    for _ in range(lines):
        words = ["".join(rng.choice(_SYLLABLES, size=rng.integers(1, 4))) for _ in range(12)]
        out.append(" ".join(words) + ".")
    return out


def make_tiny_tokenizer(out_dir: str | Path, vocab_size: int = 1000, seed: int = 0) -> Path:
    """Writes tokenizer.json and tokenizer_config.json (vocab_size ids exactly) into out_dir."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    if vocab_size < 256 + len(SPECIAL_TOKENS) + 16:
        raise ValueError(f"vocab_size must be at least {256 + len(SPECIAL_TOKENS) + 16}, got {vocab_size}")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(seed), trainer)
    if tok.get_vocab_size() != vocab_size:
        raise RuntimeError(f"the training text gave {tok.get_vocab_size()} tokens, not {vocab_size}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok.save(str(out / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": SPECIAL_TOKENS[0],
        "eos_token": SPECIAL_TOKENS[1],
        "chat_template": CHAT_TEMPLATE,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    return out
