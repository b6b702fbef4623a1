"""Configuration of the Serve application: what `serve deploy` passes as the app's `args`."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from personal_rm.embed import DEFAULT_CACHE
from personal_rm.scaling import ScalingConfig


class Autoscaling(BaseModel):
    model_config = ConfigDict(extra="forbid")

    min_replicas: int = Field(1, ge=0)
    max_replicas: int = Field(2, ge=1)
    target_ongoing_requests: float = Field(
        2.0, gt=0, description="Scale out when replicas hold more requests than this on average."
    )


class ServeAppConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    state_dir: Path = Field(
        Path("results/state"), description="Built by jobs.serve / jobs.pipeline: router + shards."
    )
    store_path: Path = Field(Path("results/feedback.sqlite3"), description="Durable feedback.")
    cache_dir: Path = Field(DEFAULT_CACHE, description="Embedding cache folder.")
    fanout: int = Field(
        2,
        ge=1,
        description="Sampler calls the N individual samples are split into, gathered "
        "concurrently (one more carries the M prototype samples).",
    )
    sampler_cpus: float = Field(0.25, gt=0, description="CPUs per sampler replica.")
    sampler_gpus: float = Field(0.0, ge=0, description="GPUs per sampler replica (vLLM judges).")
    samplers: Autoscaling = Autoscaling()
    shards: Autoscaling = Autoscaling(max_replicas=2)
    scaling: ScalingConfig = Field(
        ScalingConfig(alpha="adaptive"),
        description="Defaults for requests that do not set n / m; alpha adapts to history size.",
    )
