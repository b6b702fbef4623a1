"""Application builder for `serve run` / `serve deploy` (see `serve_config.yaml`).

serve run serve_app.app:build_app state_dir=results/state
"""

from __future__ import annotations

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
    ).bind(config.state_dir)
    shard = PrototypeShardServer.options(
        autoscaling_config=config.shards.model_dump(), ray_actor_options={"num_cpus": 0.25}
    ).bind(config.state_dir, sampler, config.fanout)
    return Ingress.options(ray_actor_options={"num_cpus": 0.25}).bind(shard, config)
