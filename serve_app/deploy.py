"""Deploying the scoring service: build its state, seed the feedback store, start the app.

Used by `jobs.serve`, `jobs.pipeline`, the serving benchmarks and the tests; `serve deploy
serve_app/serve_config.yaml` starts the same app on a cluster from a built state.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from pydantic import Field

from personal_rm.methods import MethodsConfig
from personal_rm.prepare import DataConfig, SplitConfig
from serve_app.config import ServeAppConfig

APP_NAME = "personal_rm"
# Per-request access logs would drown what the jobs print; warnings still show.
LOGGING = {"log_level": "WARNING", "enable_access_log": False}


class ServeJobConfig(DataConfig):
    host: str = Field("127.0.0.1", description="HTTP host; loopback unless you mean otherwise.")
    port: int = Field(8000, description="HTTP port.")
    rebuild: bool = Field(False, description="Refit the state even if `app.state_dir` has one.")
    demo: bool = Field(False, description="Score, post feedback, score again, then shut down.")
    split: SplitConfig = SplitConfig()
    state: MethodsConfig = MethodsConfig()
    app: ServeAppConfig = ServeAppConfig()


def build_server_state(config: ServeJobConfig) -> None:
    """Fit the judges and prototypes, save them, and seed the feedback store."""
    from personal_rm.embed import CachedEncoder, MiniLMEncoder
    from personal_rm.mrm import MetaRewardModel
    from personal_rm.prepare import prepare
    from personal_rm.serving.state import build_state, save_state

    prepared = prepare(config, config.split)
    encoder = CachedEncoder(MiniLMEncoder(), config.cache_dir)
    train, validation = prepared.seen_train(), prepared.validation()
    mrm = MetaRewardModel(config.state.mrm)
    mrm.fit(train, validation)
    router, shards = build_state(train, validation, config.state, encoder, mrm)
    save_state(router, shards, config.app.state_dir)
    seed_store(config.app.store_path, prepared.source)
    print(f"state in {config.app.state_dir}: {len(shards)} prototypes")


def seed_store(path: Path, source: Path) -> None:
    """Give every user of the data a history on the server (once: a store is never reseeded)."""
    from personal_rm.data import load_comparisons
    from personal_rm.serving.store import SQLiteFeedbackStore

    store = SQLiteFeedbackStore(path)
    if store.count() == 0:
        store.add_many(load_comparisons(source, on_error="skip").comparisons)


def demo(base_url: str, user_id: str) -> None:
    """One request before and after one piece of feedback, printed as the client sees it."""
    import httpx

    request = {
        "user_id": user_id,
        "prompt": "Explain recursion to a beginner.",
        "responses": [
            "A function that calls itself on a smaller input until a base case.",
            "Recursion is recursion.",
        ],
        "method": "rubric",
        "n": 8,
        "m": 4,
        "return_chains": True,
    }
    with httpx.Client(base_url=base_url, timeout=60) as client:
        before = client.post("/v1/score", json=request).raise_for_status().json()
        client.post(
            "/v1/feedback",
            json={
                "user_id": user_id,
                "prompt": request["prompt"],
                "chosen": request["responses"][1],
                "rejected": request["responses"][0],
            },
        ).raise_for_status()
        after = client.post("/v1/score", json=request).raise_for_status().json()
    chain = before["chains"][0]
    print(f"user {user_id} (prototype {before['prototype']}, {before['history_size']} comparisons)")
    print(f"persona: {json.dumps(chain['persona'])}")
    print("rubric: " + ", ".join(f"{c['name']} {c['weight']:.2f}" for c in chain["rubric"]))
    print(f"scores before feedback: {before['scores']} -> preferred {before['preferred']}")
    print(f"scores after feedback:  {after['scores']} -> preferred {after['preferred']}")
    print(f"timing ms: {before['timing_ms']}")


def deploy(config: ServeJobConfig) -> str:
    """Start (or reuse) Serve's HTTP proxy on host:port, run the app; return its base URL."""
    from ray import serve

    from serve_app.app import build_app

    serve.start(http_options={"host": config.host, "port": config.port}, logging_config=LOGGING)
    # The app's own too: serve.start's is not always passed on to the app's replicas.
    serve.run(
        build_app(config.app.model_dump()), name=APP_NAME, route_prefix="/", logging_config=LOGGING
    )
    auth = config.app.auth
    if auth.keys_file is None and not os.environ.get(auth.keys_env):
        print(
            f"auth is OFF (no --app.auth.keys_file, no ${auth.keys_env}): anyone who can reach "
            f"{config.host}:{config.port} may score, read and write any user; see the README, "
            "Access control"
        )
    return f"http://{config.host}:{config.port}"


