"""Shared by the serving benchmarks: a built state, a running app, and latency statistics."""

from __future__ import annotations

import numpy as np
from pydantic import Field

from personal_rm.serving.state import ROUTER_FILE
from personal_rm.serving.store import FeedbackStore
from serve_app.deploy import ServeJobConfig, build_server_state, deploy


class ServeBenchConfig(ServeJobConfig):
    method: str = Field("rubric", description="Scoring method of the benchmark's requests.")
    n: int = Field(8, description="Individual-level samples per request.")
    m: int = Field(4, description="Prototype-level samples per request.")
    requests: int = Field(100, description="Requests per measured series.")


def start(config: ServeJobConfig) -> str:
    """Build the state if it is missing, start a local Ray and the app; return the base URL."""
    from actors.local_ray import connect

    if not (config.app.state_dir / ROUTER_FILE).exists():
        build_server_state(config)
    connect()
    return deploy(config)


def most_history(store: FeedbackStore, count: int) -> list[str]:
    """The `count` users with the most stored comparisons, ties by id: a rule, not a pick."""
    return sorted(store.users(), key=lambda u: (-store.count(u), u))[:count]


def request_body(config: ServeBenchConfig, user_id: str, i: int) -> dict:
    """Distinct prompts, so no layer can answer from a cache of identical requests."""
    return {
        "user_id": user_id,
        "prompt": f"Question {i}: how should I structure a short technical report?",
        "responses": [
            f"Start with the result, then method and evidence ({i}).",
            f"Write whatever comes to mind first; structure is overrated ({i}).",
        ],
        "method": config.method,
        "n": config.n,
        "m": config.m,
    }


def latency_summary(seconds: list[float]) -> dict[str, float]:
    ms = 1000 * np.asarray(seconds)
    return {
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
        "mean_ms": float(ms.mean()),
        "count": len(ms),
    }
