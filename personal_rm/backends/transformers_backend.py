"""transformers `generate`: batched, n samples per prompt, on any torch device.

The n samples of a prompt share its prefill: the prompts are run through the model once and
their KV cache is repeated n times before decoding (`num_return_sequences` repeats the prompt
instead, so a long judge prompt, the user's whole history, would be prefilled n times).
Works on a live model too (`TransformersBackend(model, tokenizer)`): the RL stage samples its
groups from the policy being trained through this same interface.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from transformers import StaticCache

from personal_rm.backends import SamplingConfig, chat_text, distinct_samples
from personal_rm.pgenrm.prompt import Message


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

        from personal_rm.models import resolve_model

        path = resolve_model(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype))
        return cls(model.to(device).eval(), AutoTokenizer.from_pretrained(path), batch_size)

    def prefill(
        self, ids: torch.Tensor, mask: torch.Tensor, k: int, max_new_tokens: int
    ) -> StaticCache:
        """The KV cache of every prompt but its last token (generate runs that one), computed
        once per prompt and repeated for its k samples, positions numbered as generate does
        under left padding. Static: sized for the whole generation, so decoding writes in place
        instead of re-concatenating a growing cache at every step."""
        cache = StaticCache(config=self.model.config, max_cache_len=ids.shape[1] + max_new_tokens)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        self.model(
            input_ids=ids[:, :-1],
            attention_mask=mask[:, :-1],
            position_ids=positions[:, :-1],
            past_key_values=cache,
            use_cache=True,
        )
        for layer in cache.layers:  # a static layer has no batch_repeat_interleave of its own
            layer.keys, layer.values = (
                t.repeat_interleave(k, 0) for t in (layer.keys, layer.values)
            )
            layer.batch_size = k
        return cache

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
            ids, mask = batch["input_ids"], batch["attention_mask"]
            output = self.model.generate(
                input_ids=ids.repeat_interleave(k, 0),
                attention_mask=mask.repeat_interleave(k, 0),
                past_key_values=self.prefill(ids, mask, k, sampling.max_new_tokens),
                max_new_tokens=sampling.max_new_tokens,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
                **options,
            )
            decoded = tokenizer.batch_decode(output[:, ids.shape[1] :], skip_special_tokens=True)
            results += [decoded[i : i + k] * (n // k) for i in range(0, len(decoded), k)]
        return results
