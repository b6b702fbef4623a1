"""Prototype shards: per-prototype state loaded on demand, and the test-time fan-out.

A shard replica holds a few prototypes (members, their vectors and histories), loaded on
first use and evicted LRU (`@serve.multiplexed`). In the multiplexed layout the ingress tags
each request with its prototype id, so Serve routes it to a replica that has that prototype
loaded; in the grouped layout each of several shard deployments serves a fixed subset.
For one request a shard runs `personal_rm.pgenrm.scaling.scale` with the chain samplers as its
sampler: the N individual samples (split into `fanout` calls) and the M neighbours' samples
go out at once, and the two levels are mixed as the evaluator mixes them.
"""

from __future__ import annotations

import asyncio
from functools import partial
from typing import Any

import numpy as np
from ray import serve
from ray.exceptions import RayActorError
from ray.serve.handle import DeploymentHandle

from personal_rm.pgenrm.chain import Samples
from personal_rm.pgenrm.scaling import ScaledScores, TTSConfig
from personal_rm.serving.state import (
    PrototypeShard,
    load_shard,
    neighbour_histories,
    shard_scores,
)
from personal_rm.serving.store import open_store
from serve_app.config import ServeAppConfig

PROTOTYPES_PER_REPLICA = 8  # a shard file is members' histories: a few MB at most
SAMPLER_ATTEMPTS = 3


def split_evenly(total: int, parts: int) -> list[int]:
    """`total` samples over at most `parts` calls, none empty."""
    parts = max(1, min(parts, total))
    return [total // parts + (i < total % parts) for i in range(parts)]


@serve.deployment
class PrototypeShardServer:
    def __init__(self, config: ServeAppConfig, sampler: DeploymentHandle):
        self.state_dir, self.sampler, self.fanout = config.state_dir, sampler, config.fanout
        self.store = open_store(config.store_location)  # neighbours' texts, for an LLM
        self.text_history = config.text_history

    @serve.multiplexed(max_num_models_per_replica=PROTOTYPES_PER_REPLICA)
    async def get_prototype(self, prototype_id: str) -> PrototypeShard:
        return await asyncio.to_thread(load_shard, self.state_dir, int(prototype_id))

    async def _sample(self, *args) -> Samples:
        """A sampler replica that dies mid-call (node loss, OOM, a kill) costs a retry on
        another replica, not a failed request: sampling is a pure function of its inputs."""
        for _ in range(SAMPLER_ATTEMPTS - 1):
            try:
                return await self.sampler.sample.remote(*args)
            except RayActorError:
                continue
        return await self.sampler.sample.remote(*args)

    async def _fan_out(
        self, method: str, histories: list[Any], request: Any, n: int, seed: int, chains: bool
    ) -> Samples:
        """`scale`'s sampler: n samples split into `fanout` concurrent calls (seeded apart)."""
        parts = await asyncio.gather(
            *(
                self._sample(method, histories, request, k, seed + 1000 * i, chains)
                for i, k in enumerate(split_evenly(n, self.fanout))
            )
        )
        scores = np.concatenate([p.scores for p in parts], axis=-2)
        if not chains:
            return Samples(scores)
        by_history = zip(*(p.chains for p in parts), strict=True)
        return Samples(scores, [[c for part in rows for c in part] for rows in by_history])

    async def score(
        self,
        prototype: int,
        method: str,
        user: str,
        history: Any,
        vector: np.ndarray,
        request: Any,
        scaling: TTSConfig,
        chains: bool = False,
    ) -> ScaledScores:
        """`history` and `request` in the form the method's judge reads (features or texts)."""
        shard = await self.get_prototype(str(prototype))
        histories = partial(
            neighbour_histories, shard, self.store, method=method, limit=self.text_history
        )
        sample = partial(self._fan_out, method)
        return await shard_scores(
            shard, sample, user, history, vector, request, scaling, histories, chains
        )
