"""Configuration of the Serve application: what `serve deploy` passes as the app's `args`."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from personal_rm.backends import BackendConfig, SamplingConfig
from personal_rm.config import Config
from personal_rm.embed import DEFAULT_CACHE
from personal_rm.pgenrm.chain_data import JudgeViewConfig


class Autoscaling(Config):
    min_replicas: int = Field(1, ge=0)
    max_replicas: int = Field(2, ge=1)
    target_ongoing_requests: float = Field(
        2.0, gt=0, description="Scale out when replicas hold more requests than this on average."
    )


class GenRMJudgeConfig(JudgeViewConfig):
    """The generative judge that method `genrm` runs in the chain samplers. Its view of a
    request (clipping, history budget) defaults to the one the SmolLM2 judge is trained on:
    serve a judge with the view it learnt."""

    backend: BackendConfig = Field(description="The LLM: transformers (CPU/GPU), vllm, openai.")
    sampling: SamplingConfig = SamplingConfig()

    @model_validator(mode="after")
    def _budget(self) -> GenRMJudgeConfig:
        self.budget()  # PromptBudget's own checks
        return self


class AuthConfig(Config):
    """API keys (see `serve_app/auth.py` and the README's "Access control"). Auth is on when any
    key is configured; with none the server is open, as the local demo is, and warns so."""

    keys_file: Path | None = Field(
        None,
        description="Keys file, one JSON line per key (hashes only), read by every ingress "
        "replica; a file with no keys is an error, not an open server.",
    )
    keys_env: str = Field(
        "PRM_API_KEYS",
        description="Environment variable that may hold more key lines (same format), e.g. "
        "from a secret store; passed on to the ingress replicas.",
    )
    samples_per_s: float = Field(
        200.0,
        gt=0,
        description="Default per-key rate of sampler work: a score costs n + m samples, a "
        "batch the sum. About all a local CPU app serves (16 req/s at n=8, m=4); keys may "
        "set their own.",
    )
    requests_per_s: float = Field(
        50.0, gt=0, description="Default per-key rate of requests of any kind (feedback too)."
    )
    burst_s: float = Field(
        10.0,
        gt=0,
        description="A key may spend this many seconds of its rates at once: at the defaults "
        "a full 64-request batch at n=8, m=4 (768 samples) passes from idle.",
    )


class ServeAppConfig(Config):
    state_dir: Path = Field(
        Path("results/state"), description="Built by jobs.serve / jobs.pipeline: router + shards."
    )
    store_path: Path = Field(
        Path("results/feedback.sqlite3"), description="Durable feedback: a SQLite file, one node."
    )
    store_url: str | None = Field(
        None,
        pattern=r"^(postgresql|postgres|sqlite)://",
        description="Overrides store_path: a database every replica shares, postgresql://... "
        "(libpq's URL; put no password in it: libpq reads PGPASSWORD, and a bare "
        "`postgresql://` takes all of PGHOST, PGUSER, PGDATABASE from the environment).",
    )
    cache_dir: Path = Field(DEFAULT_CACHE, description="Embedding cache folder.")
    fanout: int = Field(
        1,
        ge=1,
        description="Sampler calls the N individual samples are split into, gathered "
        "concurrently (one more carries the M prototype samples). Each part repeats the "
        "per-call work (a feature judge's adaptation, an LLM's prefill): split only across "
        "otherwise idle replicas, e.g. GPU replicas of an LLM judge.",
    )
    shard_layout: Literal["multiplexed", "grouped"] = Field(
        "multiplexed",
        description="multiplexed: one shard deployment whose replicas load prototypes on demand "
        "(`@serve.multiplexed`, LRU) and requests go to a replica that has theirs; grouped: "
        "`shard_groups` deployments, prototype p always served by deployment p % shard_groups.",
    )
    shard_groups: int = Field(2, ge=1, description="Shard deployments of the grouped layout.")
    prototype_match_timeout_s: float = Field(
        0.1,
        ge=0,
        description="multiplexed: how long a request for a prototype no replica has loaded waits "
        "for one that has it before going to any replica (Serve's default, 1-2 s, is meant for "
        "big models; a prototype loads in milliseconds).",
    )
    sampler_cpus: float = Field(0.25, gt=0, description="CPUs per sampler replica.")
    sampler_gpus: float = Field(0.0, ge=0, description="GPUs per sampler replica (vLLM judges).")
    genrm: GenRMJudgeConfig | None = Field(
        None, description="The LLM judge of method `genrm`; that method is off when unset."
    )
    samplers: Autoscaling = Autoscaling()
    shards: Autoscaling = Autoscaling(max_replicas=2)
    auth: AuthConfig = AuthConfig()

    @property
    def store_location(self) -> str:
        """The feedback store, as `personal_rm.serving.store.open_store` takes it."""
        return self.store_url or str(self.store_path)

    @property
    def text_history(self) -> int:
        """Comparisons of a neighbour's history worth reading for the LLM judge: the latest
        `history_size`, all it is shown."""
        return self.genrm.history_size if self.genrm is not None else 0
