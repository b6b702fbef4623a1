"""Chain samplers: replicas that hold the judges and write chains, the unit of fan-out."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from ray import serve

from personal_rm.chains import EvaluationChain
from personal_rm.features import PairSet
from personal_rm.serving import load_router


@serve.deployment
class ChainSampler:
    def __init__(self, state_dir: Path):
        import torch

        torch.set_num_threads(1)  # replicas share the node's cores; one thread each scales
        self.judges = load_router(state_dir).judges
        # Serve runs sync methods on a thread pool, and the judges' inner loop swaps module
        # parameters (torch.func.functional_call): one sampling at a time per replica. The
        # work is CPU-bound on one thread anyway; parallelism comes from replicas.
        self.lock = threading.Lock()

    def methods(self) -> list[str]:
        return sorted(self.judges)

    def sample(
        self, method: str, histories: Sequence[PairSet], request: np.ndarray, n: int, seed: int
    ) -> list[list[EvaluationChain | None]]:
        with self.lock:
            return self.judges[method].sample_chains(histories, request, n, seed)
