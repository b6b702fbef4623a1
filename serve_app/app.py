"""Application builder for `serve run` / `serve deploy` (see `serve_config.yaml`).

serve run serve_app.app:build_app state_dir=results/state
"""

from __future__ import annotations

import os
from typing import Any

from ray.serve import Application

from serve_app.config import ServeAppConfig
from serve_app.ingress import Ingress
from serve_app.sampler import ChainSampler
from serve_app.shard import PrototypeShardServer


def build_app(args: dict[str, Any]) -> Application:
    config = ServeAppConfig(**args)
    sampler = ChainSampler.options(
        autoscaling_config=config.samplers.model_dump(),
        ray_actor_options={"num_cpus": config.sampler_cpus, "num_gpus": config.sampler_gpus},
    ).bind(config)
    groups = config.shard_groups if config.shard_layout == "grouped" else 1
    shards = [
        PrototypeShardServer.options(
            name=f"PrototypeShardServer{g if groups > 1 else ''}",
            autoscaling_config=config.shards.model_dump(),
            ray_actor_options={"num_cpus": 0.25},
        ).bind(config, sampler)
        for g in range(groups)
    ]
    # The ingress's handles route the multiplexed requests, so the matching timeout is its env.
    env = {
        "RAY_SERVE_MULTIPLEXED_MODEL_ID_MATCHING_TIMEOUT_S": str(config.prototype_match_timeout_s)
    }
    # Keys given in the environment reach the ingress replicas whatever env Ray's workers were
    # started with; the lines hold hashes only, so the deployment's config may show them.
    if os.environ.get(config.auth.keys_env):
        env[config.auth.keys_env] = os.environ[config.auth.keys_env]
    return Ingress.options(
        ray_actor_options={"num_cpus": 0.25, "runtime_env": {"env_vars": env}}
    ).bind(shards, config)
