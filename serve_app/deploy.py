"""Deploying the scoring service: build its state, seed the feedback store, start the app.

Used by `jobs.serve`, `jobs.pipeline`, the serving benchmarks and the tests; `serve deploy
serve_app/serve_config.yaml` starts the same app on a cluster from a built state.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from pydantic import Field

from personal_rm import showcase
from personal_rm.data.comparison import Comparison, by_user
from personal_rm.methods import MethodsConfig
from personal_rm.prepare import DataConfig, SplitConfig
from serve_app.config import ServeAppConfig

if TYPE_CHECKING:
    import httpx

APP_NAME = "personal_rm"
# Per-request access logs would drown what the jobs print; warnings still show.
LOGGING = {"log_level": "WARNING", "enable_access_log": False}
VERBOSE_LOGGING = {"log_level": "INFO", "enable_access_log": True}
# The closing demo of jobs.pipeline (see personal_rm.showcase for its rules). The rubric judge:
# on llmfao MRM's fitted mixtures stay near uniform and `mrm_shrunk` is global BT for every
# user (its lam is 0 there), so only the rubric judge's winners differ between users.
DEMO_METHOD = "rubric"
CANDIDATES = 4  # responses per candidate set: a table one can read
FEEDBACKS = 6  # the cold-start replay: "within a few feedbacks"
COLD_USERS = 3  # unseen users tried, in the rule's order, before giving up
MAX_TARGETS = 8  # targets tried per user: 8 x 7 scores, one batch


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
    seed_store(config.app.store_location, prepared.source)
    print(f"state in {config.app.state_dir}: {len(shards)} prototypes")


def seed_store(store_location: str | Path, source: Path) -> None:
    """Give every user of the data a history on the server (once: a store is never reseeded).
    `store_location`: a SQLite path or a store URL, as `open_store` takes it."""
    from personal_rm.data import load_comparisons
    from personal_rm.serving.store import open_store

    with open_store(store_location) as store:
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


def score_many(client: httpx.Client, requests: list[dict]) -> list[dict]:
    """Every request through /v1/score/batch, as many batches as the API's limit asks."""
    from serve_app.api import LIMITS

    results = []
    for start in range(0, len(requests), LIMITS.max_batch):
        batch = {"requests": requests[start : start + LIMITS.max_batch]}
        results += client.post("/v1/score/batch", json=batch).raise_for_status().json()["results"]
    return results


def fitted_rubrics(app: ServeAppConfig, users: Sequence[str]) -> tuple[dict, list[str]]:
    """Each user's fitted rubric (criterion weights, the judge's point estimate) on the
    history the server reads for them, and the criteria's names."""
    from personal_rm.embed import CachedEncoder, MiniLMEncoder
    from personal_rm.features import PairSet
    from personal_rm.serving.state import Frontend, load_router
    from personal_rm.serving.store import SQLiteFeedbackStore
    from serve_app.api import LIMITS

    encoder = CachedEncoder(MiniLMEncoder(), app.cache_dir)
    router = load_router(app.state_dir, encoder)
    front = Frontend(router, SQLiteFeedbackStore(app.store_path), encoder, LIMITS.max_history)
    history = PairSet.concat([front.embed(front.comparisons(u)) for u in users])
    judge = router.judges[DEMO_METHOD]
    return judge.rubrics(history, users), [c.name for c in judge.criteria]


def opposite_users(
    client: httpx.Client,
    app: ServeAppConfig,
    comparisons: list[Comparison],
    seen: Sequence[str],
    global_reward: showcase.GlobalReward,
) -> showcase.PairShown | None:
    """Two seen users with opposite fitted tastes score the same candidate sets; the one
    where their winners differ most is shown (`showcase` rules). None: no set separates them."""
    weights, criteria = fitted_rubrics(app, seen)
    users = showcase.most_opposite(weights)
    sets = showcase.candidate_sets(comparisons, global_reward, CANDIDATES)
    asked = [
        {"user_id": u, "prompt": p, "responses": rs, "method": DEMO_METHOD}
        for p, rs in sets.items()
        for u in users
    ]
    answers = iter(score_many(client, asked))
    served = {p: [next(answers) for _ in users] for p in sets}
    scores = {p: tuple(np.asarray(a["scores"]) for a in pair) for p, pair in served.items()}
    prompt = showcase.widest_disagreement(scores)
    if prompt is None:
        return None
    a, b = served[prompt]
    leans = showcase.leanings(weights, criteria, users)
    history = (a["history_used"], b["history_used"])
    return showcase.PairShown(
        users, history, leans, prompt, sets[prompt], (a["scores"], b["scores"])
    )


def _item(c: Comparison) -> dict[str, str]:
    return {"prompt": c.prompt, "chosen": c.chosen, "rejected": c.rejected}


def _target_request(user: str, target: Comparison, method: str, history=()) -> dict:
    return {
        "user_id": user,
        "prompt": target.prompt,
        "responses": [target.chosen, target.rejected],
        "method": method,
        "history": [_item(c) for c in history],
    }


def flipping_case(
    client: httpx.Client, cases: list[showcase.ColdCase], method: str
) -> tuple[showcase.ColdCase, Comparison] | None:
    """The first case with a target whose served ranking flips; its soonest-flipping target.
    Scored with the feedback sent as the request's history, which the server reads as it
    reads stored feedback: nothing is written while searching."""
    for case in cases:
        user, targets = f"replay-{case.user}", case.targets[:MAX_TARGETS]
        asked = [
            _target_request(user, t, method, case.feedback[:h])
            for t in targets
            for h in range(len(case.feedback) + 1)
        ]
        answers = iter(score_many(client, asked))
        flips = {}
        for i in range(len(targets)):
            served = [next(answers)["scores"] for _ in range(len(case.feedback) + 1)]
            flip = showcase.first_flip([s[0] > s[1] for s in served])
            if flip is not None:
                flips[i] = flip
        if flips:
            return case, targets[min(flips, key=lambda i: (flips[i], i))]
    return None


def _cold_step(
    client: httpx.Client, user: str, target: Comparison, method: str, feedbacks: int
) -> showcase.ColdStep:
    request = _target_request(user, target, method)
    answer = client.post("/v1/score", json=request).raise_for_status().json()
    chosen, rejected = answer["scores"]
    return showcase.ColdStep(feedbacks, answer["prototype"], answer["alpha"], chosen, rejected)


def cold_start(
    client: httpx.Client,
    comparisons: list[Comparison],
    unseen: Sequence[str],
    global_reward: showcase.GlobalReward,
    method: str,
) -> showcase.ColdShown | None:
    """A cold-start user posts feedback one comparison at a time (POST /v1/feedback), the
    target scored after each (POST /v1/score); `showcase` rules pick user and target."""
    wanted = set(unseen)
    histories = by_user([c for c in comparisons if c.user_id in wanted])
    cases = showcase.cold_cases(histories, global_reward, FEEDBACKS)[:COLD_USERS]
    found = flipping_case(client, cases, method)
    if found is None:
        return None
    case, target = found
    user = f"replay-{case.user}"
    steps = [_cold_step(client, user, target, method, 0)]
    for h, comparison in enumerate(case.feedback, start=1):
        client.post("/v1/feedback", json={"user_id": user, **_item(comparison)}).raise_for_status()
        steps.append(_cold_step(client, user, target, method, h))
    against = len(case.feedback) + len(case.targets)
    return showcase.ColdShown(case.user, user, against, len(histories[case.user]), target, steps)


def demo_personalization(
    base_url: str,
    app: ServeAppConfig,
    comparisons: list[Comparison],
    seen: Sequence[str],
    unseen: Sequence[str],
    global_reward: showcase.GlobalReward,
) -> tuple[showcase.PairShown | None, showcase.ColdShown | None]:
    """Personalization as a client of the running app sees it: two seen users with opposite
    tastes score the same responses, then a cold-start user's feedback flips a ranking."""
    import httpx

    with httpx.Client(base_url=base_url, timeout=300) as client:
        pair = opposite_users(client, app, comparisons, seen, global_reward)
        cold = cold_start(client, comparisons, unseen, global_reward, DEMO_METHOD)
    return pair, cold


def deploy(config: ServeJobConfig, verbose: bool = False) -> str:
    """Start (or reuse) Serve's HTTP proxy on host:port, run the app; return its base URL.
    `verbose`: Serve's INFO logs and a line per request, else warnings only."""
    from ray import serve

    from serve_app.app import build_app

    logging_config = VERBOSE_LOGGING if verbose else LOGGING
    # This process's own Serve logger ("Started Serve", "Application ... is ready") too.
    logging.getLogger("ray.serve").setLevel(logging_config["log_level"])
    http = {"host": config.host, "port": config.port}
    serve.start(http_options=http, logging_config=logging_config)
    # The app's own too: serve.start's is not always passed on to the app's replicas.
    app = build_app(config.app.model_dump())
    serve.run(app, name=APP_NAME, route_prefix="/", logging_config=logging_config)
    auth = config.app.auth
    if auth.keys_file is None and not os.environ.get(auth.keys_env):
        print(
            f"auth is OFF (no --app.auth.keys_file, no ${auth.keys_env}): anyone who can reach "
            f"{config.host}:{config.port} may score, read and write any user; see the README, "
            "Access control"
        )
    return f"http://{config.host}:{config.port}"
