"""LLM generation behind one interface: `generate(prompts, n, sampling) -> list[list[str]]`.

A prompt is a list of chat messages; the result holds `n` samples per prompt, in prompt
order. Asking for the n samples of a prompt in one call is what lets vLLM prefill the prompt
once (`SamplingParams(n=...)`) and transformers expand it once (`num_return_sequences`).
Kinds: `transformers` (CPU or GPU), `vllm` (the `gpu` extra, imported only when built),
`openai` (any OpenAI-compatible `/v1/chat/completions` server), and two CPU teachers that
are not language models: `rubric`, the rubric judge (`backends.rubric_teacher`), and
`heuristic`, a rule-based stand-in (`backends.heuristic`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any, Literal, Protocol

from pydantic import Discriminator, Field, Tag

from personal_rm.config import Config
from personal_rm.embed import DEFAULT_CACHE
from personal_rm.pgenrm.prompt import Message


class SamplingConfig(Config):
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


# One config class per kind, so a field that a kind does not use is an error, not ignored.


class TransformersBackendConfig(Config):
    kind: Literal["transformers"] = "transformers"
    model: str = Field(
        "", description="Model folder (any Hugging Face causal LM) or a named one: smollm2-135m."
    )
    device: str = Field("cpu", description="torch device.")
    dtype: str = Field("float32", description="Weights dtype: float32, bfloat16, float16.")
    batch_size: int = Field(8, ge=1, description="Prompts per generate call.")


class VLLMBackendConfig(Config):
    kind: Literal["vllm"] = "vllm"
    model: str = Field("", description="Model folder, or a named one: smollm2-135m.")
    dtype: str = Field("auto", description="Weights dtype (auto: the model's; bfloat16 on CPU).")
    tensor_parallel_size: int = Field(1, ge=1, description="GPUs per model replica.")
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1, description="Share of GPU memory.")
    max_model_len: int | None = Field(None, description="Context length (default: the model's).")
    enforce_eager: bool = Field(False, description="No CUDA graphs (required on CPU).")
    in_process: bool = Field(
        False,
        description="Engine and worker in this process (one worker): weights can then be "
        "copied in from a trainer (`load_weights`).",
    )


class OpenAIBackendConfig(Config):
    kind: Literal["openai"] = "openai"
    model: str = Field("", description="The served model's name.")
    base_url: str = Field("http://127.0.0.1:8000/v1", description="The server's /v1 URL.")
    api_key_env: str = Field("OPENAI_API_KEY", description="Environment variable with the key.")
    timeout_s: float = Field(120.0, gt=0, description="Seconds per request before a retry.")
    max_retries: int = Field(3, ge=0, description="Retries of a failed request, then raise.")
    concurrency: int = Field(8, ge=1, description="Requests in flight at once.")


class RubricTeacherConfig(Config):
    """The rubric judge as the CPU teacher (`backends.rubric_teacher`): not a language model."""

    kind: Literal["rubric"] = "rubric"
    judge: str = Field(
        "results/chains/rubric_teacher",
        description="Artefact stem of the fitted judge (jobs.build_chains fits it if missing).",
    )
    rubric_size: int = Field(3, ge=1, description="Named criteria in a chain; the rest fold.")
    cache_dir: str = Field(str(DEFAULT_CACHE), description="Embedding cache folder.")


class HeuristicBackendConfig(Config):
    """The CPU stand-in teacher (`backends.heuristic`): not a language model, no settings."""

    kind: Literal["heuristic"] = "heuristic"


def _kind(value: Any) -> str:
    """The tag of a backend config; transformers when a mapping names none."""
    if isinstance(value, dict):
        return value.get("kind", "transformers")
    return getattr(value, "kind", "transformers")


BackendConfig = Annotated[
    Annotated[TransformersBackendConfig, Tag("transformers")]
    | Annotated[VLLMBackendConfig, Tag("vllm")]
    | Annotated[OpenAIBackendConfig, Tag("openai")]
    | Annotated[HeuristicBackendConfig, Tag("heuristic")]
    | Annotated[RubricTeacherConfig, Tag("rubric")],
    Discriminator(_kind),
]


def chat_text(tokenizer: Any, messages: Sequence[Message]) -> str:
    """The model's own chat template with the assistant turn opened: what generation continues."""
    return tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)


def distinct_samples(n: int, sampling: SamplingConfig) -> int:
    """Greedy decoding has one answer: backends ask for it once and repeat it n times (vLLM,
    transformers and vLLM's server all refuse n > 1 without sampling)."""
    return n if sampling.temperature > 0 else 1


def build_backend(config: BackendConfig) -> GenerationBackend:
    if isinstance(config, TransformersBackendConfig):
        from personal_rm.backends.transformers_backend import TransformersBackend

        return TransformersBackend.load(
            config.model, config.device, config.dtype, config.batch_size
        )
    if isinstance(config, VLLMBackendConfig):
        from personal_rm.backends.vllm_backend import VLLMBackend

        return VLLMBackend(
            config.model,
            tensor_parallel_size=config.tensor_parallel_size,
            dtype=config.dtype,
            max_model_len=config.max_model_len,
            gpu_memory_utilization=config.gpu_memory_utilization,
            enforce_eager=config.enforce_eager,
            in_process=config.in_process,
        )
    if isinstance(config, OpenAIBackendConfig):
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
    if isinstance(config, RubricTeacherConfig):
        from personal_rm.backends.rubric_teacher import RubricTeacher, load_teacher
        from personal_rm.embed import CachedEncoder, MiniLMEncoder

        encoder = CachedEncoder(MiniLMEncoder(), config.cache_dir)
        return RubricTeacher(load_teacher(config.judge, encoder), encoder, config.rubric_size)
    from personal_rm.backends.heuristic import HeuristicTeacher

    return HeuristicTeacher()


__all__ = [
    "BackendConfig",
    "GenerationBackend",
    "HeuristicBackendConfig",
    "OpenAIBackendConfig",
    "RubricTeacherConfig",
    "SamplingConfig",
    "TransformersBackendConfig",
    "VLLMBackendConfig",
    "build_backend",
    "chat_text",
    "distinct_samples",
]
