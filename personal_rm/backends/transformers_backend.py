"""transformers `generate`: batched, `num_return_sequences=n`, on any torch device.

Works on a live model too (`TransformersBackend(model, tokenizer)`): the RL stage samples its
groups from the policy being trained through this same interface.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from personal_rm.backends import SamplingConfig, chat_text, distinct_samples
from personal_rm.chains_prompt import Message


class TransformersBackend:
    def __init__(self, model: Any, tokenizer: Any, batch_size: int = 8):
        self.model = model
        self.tokenizer = tokenizer
        if tokenizer.pad_token is None:  # e.g. Llama 3; padded positions are masked anyway
            tokenizer.pad_token = tokenizer.eos_token
        self.batch_size = batch_size

    @classmethod
    def load(
        cls, path: str, device: str = "cpu", dtype: str = "float32", batch_size: int = 8
    ) -> TransformersBackend:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype))
        return cls(model.to(device).eval(), AutoTokenizer.from_pretrained(path), batch_size)

    @torch.inference_mode()
    def generate(
        self, prompts: Sequence[Sequence[Message]], n: int, sampling: SamplingConfig
    ) -> list[list[str]]:
        if sampling.seed is not None:
            torch.manual_seed(sampling.seed)
        tokenizer = self.tokenizer
        tokenizer.padding_side = "left"  # generation continues every row from its last token
        k = distinct_samples(n, sampling)
        options: dict[str, Any] = {"do_sample": sampling.temperature > 0}
        if options["do_sample"]:
            options.update(temperature=sampling.temperature, top_p=sampling.top_p)
        texts = [chat_text(tokenizer, p) for p in prompts]
        results: list[list[str]] = []
        for start in range(0, len(texts), self.batch_size):
            batch = tokenizer(
                texts[start : start + self.batch_size],
                return_tensors="pt",
                padding=True,
                add_special_tokens=False,  # the chat template already wrote them
            ).to(self.model.device)
            output = self.model.generate(
                **batch,
                max_new_tokens=sampling.max_new_tokens,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
                num_return_sequences=k,
                **options,
            )
            decoded = tokenizer.batch_decode(
                output[:, batch["input_ids"].shape[1] :], skip_special_tokens=True
            )
            results += [decoded[i : i + k] * (n // k) for i in range(0, len(decoded), k)]
        return results
