"""LLM generation behind one interface: `generate(prompts, n, sampling) -> list[list[str]]`.

A prompt is a list of chat messages; the result holds `n` samples per prompt, in prompt
order. Asking for the n samples of a prompt in one call is what lets vLLM prefill the prompt
once (`SamplingParams(n=...)`) and transformers expand it once (`num_return_sequences`).
Kinds: `transformers` (CPU or GPU), `vllm` (the `gpu` extra, imported only when built),
`openai` (any OpenAI-compatible `/v1/chat/completions` server) and `heuristic`, a CPU
stand-in teacher that is not a language model (see `backends.heuristic`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field

from personal_rm.pgenrm.prompt import Message


class SamplingConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_new_tokens: int = Field(512, description="Most tokens generated per sample.")
    temperature: float = Field(1.0, description="0 is greedy (then n samples are identical).")
    top_p: float = Field(1.0, description="Nucleus sampling mass.")
    seed: int | None = Field(None, description="Seed of the sampler, for repeatable samples.")


class GenerationBackend(Protocol):
    def generate(
        self, prompts: Sequence[Sequence[Message]], n: int, sampling: SamplingConfig
    ) -> list[list[str]]:
        """`n` completions of every prompt, in prompt order."""
        ...


class BackendConfig(BaseModel):
    """One flat config for every kind: fields that a kind does not use are ignored by it."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["transformers", "vllm", "openai", "heuristic"] = Field(
        "transformers", description="transformers, vllm, openai, or the heuristic CPU teacher."
    )
    model: str = Field("", description="Model folder (transformers, vllm) or served model name.")
    device: str = Field("cpu", description="transformers: torch device.")
    dtype: str = Field("float32", description="Weights dtype: float32, bfloat16, float16.")
    batch_size: int = Field(8, description="transformers: prompts per generate call.")
    tensor_parallel_size: int = Field(1, description="vllm: GPUs per model replica.")
    gpu_memory_utilization: float = Field(0.9, description="vllm: share of GPU memory to use.")
    max_model_len: int | None = Field(None, description="vllm: context length (default: model's).")
    enforce_eager: bool = Field(False, description="vllm: no CUDA graphs (required on CPU).")
    base_url: str = Field("http://127.0.0.1:8000/v1", description="openai: server's /v1 URL.")
    api_key_env: str = Field("OPENAI_API_KEY", description="openai: env variable with the key.")
    timeout_s: float = Field(120.0, description="openai: seconds per request before a retry.")
    max_retries: int = Field(3, description="openai: retries of a failed request, then raise.")
    concurrency: int = Field(8, description="openai: requests in flight at once.")


def chat_text(tokenizer: Any, messages: Sequence[Message]) -> str:
    """The model's own chat template with the assistant turn opened: what generation continues."""
    return tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)


def distinct_samples(n: int, sampling: SamplingConfig) -> int:
    """Greedy decoding has one answer: backends ask for it once and repeat it n times (vLLM,
    transformers and vLLM's server all refuse n > 1 without sampling)."""
    return n if sampling.temperature > 0 else 1


def build_backend(config: BackendConfig) -> GenerationBackend:
    if config.kind == "transformers":
        from personal_rm.backends.transformers_backend import TransformersBackend

        return TransformersBackend.load(
            config.model, config.device, config.dtype, config.batch_size
        )
    if config.kind == "vllm":
        from personal_rm.backends.vllm_backend import VLLMBackend

        return VLLMBackend(
            config.model,
            tensor_parallel_size=config.tensor_parallel_size,
            dtype=config.dtype,
            max_model_len=config.max_model_len,
            gpu_memory_utilization=config.gpu_memory_utilization,
            enforce_eager=config.enforce_eager,
        )
    if config.kind == "openai":
        import os

        from personal_rm.backends.openai_backend import OpenAIBackend

        return OpenAIBackend(
            config.base_url,
            config.model,
            api_key=os.environ.get(config.api_key_env),
            timeout_s=config.timeout_s,
            max_retries=config.max_retries,
            concurrency=config.concurrency,
        )
    from personal_rm.backends.heuristic import HeuristicTeacher

    return HeuristicTeacher()


__all__ = [
    "BackendConfig",
    "GenerationBackend",
    "SamplingConfig",
    "build_backend",
    "chat_text",
    "distinct_samples",
]
