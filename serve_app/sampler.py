"""Chain samplers: replicas that hold the judges and write chains, the unit of fan-out."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

from ray import serve

from personal_rm.backends import build_backend
from personal_rm.pgenrm.chain import Samples
from personal_rm.pgenrm.llm_judge import LLMJudge
from personal_rm.pgenrm.scaling import Judge
from personal_rm.serving.state import load_router
from serve_app.config import ServeAppConfig


def build_judges(config: ServeAppConfig) -> dict[str, Judge]:
    """The state's feature judges, and the LLM judge where one is configured."""
    judges: dict[str, Judge] = dict(load_router(config.state_dir).judges)
    if config.genrm is not None:
        judges["genrm"] = LLMJudge(
            build_backend(config.genrm.backend),
            config.genrm.sampling,
            config.genrm.history_size,
            config.genrm.max_text_chars,
            history_tokens=config.genrm.history_tokens,
            tokenizer=config.genrm.tokenizer,
            history_text_chars=config.genrm.history_text_chars,
        )
    return judges


@serve.deployment
class ChainSampler:
    def __init__(self, config: ServeAppConfig):
        import torch

        torch.set_num_threads(1)  # replicas share the node's cores; one thread each scales
        self.judges = build_judges(config)
        # Serve runs sync methods on a thread pool; the feature judges' inner loop swaps module
        # parameters (torch.func.functional_call) and an LLM generates from one model: one
        # sampling at a time per replica. Parallelism comes from replicas.
        self.lock = threading.Lock()

    def sample(
        self, method: str, histories: Sequence[Any], request: Any, n: int, seed: int, chains: bool
    ) -> Samples:
        with self.lock:
            return self.judges[method].sample(histories, request, n, seed, chains)
