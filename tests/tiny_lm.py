"""A tiny random-weight Llama and a byte-level BPE tokenizer trained locally: no download.

    python -m tests.tiny_lm /tmp/tiny [chains.jsonl]   # tokenizer fit to chain data

Tests, the CPU pipeline and benchmarks use it to run the generative judge's plumbing for
real. Defaults: head_dim 32 (vLLM's CPU attention accepts it), and just big enough to learn
the chain format in ~200 SFT steps (hidden 64 needs far more). The tokenizer is trained on
text like what the model will read and write (pass a corpus), so sequences stay short; the
chat template is a plain one of our own.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from pathlib import Path

EOS, PAD = "<|end|>", "<|pad|>"
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
DEFAULT_CORPUS = (
    "The user prefers short, direct answers with a list of steps.",
    '{"persona": {"style": "plain"}, "rubric": [{"name": "detail", "weight": 0.5}]}',
)


def build_tiny_lm(
    directory: str | Path,
    corpus: Iterable[str] = DEFAULT_CORPUS,
    *,
    vocab_size: int = 512,
    hidden_size: int = 128,
    num_layers: int = 2,
    num_heads: int = 4,
    max_positions: int = 4096,
    seed: int = 0,
) -> Path:
    """Write a random `LlamaForCausalLM` and its tokenizer to `directory`; return it."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    directory = Path(directory)
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    roles = [f"<|{role}|>" for role in ("system", "user", "assistant")]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[PAD, EOS, *roles],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    bpe.train_from_iterator(corpus, trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token=EOS, pad_token=PAD)
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(directory)

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        max_position_embeddings=max_positions,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(directory)
    return directory


def chain_corpus(path: str | Path) -> list[str]:
    """Every prompt message and target chain of a chain dataset (`jobs.build_chains`)."""
    from personal_rm.pgenrm.chain_data import read_chain_rows

    texts = []
    for row in read_chain_rows(Path(path)):
        texts += [m["content"] for m in row["prompt"] + row.get("completion", [])]
    return texts


if __name__ == "__main__":
    out = sys.argv[1] if len(sys.argv) > 1 else "tiny-lm"
    corpus = chain_corpus(sys.argv[2]) if len(sys.argv) > 2 else DEFAULT_CORPUS
    print(build_tiny_lm(out, corpus))
