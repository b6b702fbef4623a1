"""Rewards per second: `/get_reward` in batches against `/v1/score` called once per pair.

    python -m bench.reward_throughput --requests 128 --batch 64 --method mrm

One app, one run. Each round sends `batch` rows to `/get_reward` (`batch / 2` pairs, two
responses each, users mixed as an RL batch mixes them), then scores as many other pairs one
`/v1/score` call each: at the state's test-time scaling (`--n`, `--m`) and at the least
(n=1, m=0). Every text is new (no embedding cache hit on either path) and requests are
sequential, one client; rounds interleave the paths so that a shared machine's load falls on
all alike. Writes `bench/results/reward_throughput.json`.
"""

from __future__ import annotations

import itertools
import json
import os
import sys
import time
from pathlib import Path

import httpx
from pydantic import Field

from bench.service import ServeBenchConfig, most_history, request_body, start
from personal_rm.config import parse_config
from personal_rm.serving.store import open_store


class ThroughputConfig(ServeBenchConfig):
    method: str = Field("mrm", description="Reward method of both paths.")
    requests: int = Field(128, description="Pairs scored per path (rounded to whole batches).")
    batch: int = Field(64, ge=2, description="Rows per /get_reward call (two per pair).")
    users: int = Field(4, ge=1, description="Users (most stored history first), mixed per batch.")
    out: Path = Path("bench/results/reward_throughput.json")


def reward_rows(bodies: list[dict]) -> dict[str, list[str]]:
    """Pairs as OpenRLHF's rows: each response after its prompt, the user id as the label."""
    rows = [(b["prompt"], r, b["user_id"]) for b in bodies for r in b["responses"]]
    return {
        "query": [p + r for p, r, _ in rows],
        "prompts": [p for p, _, _ in rows],
        "labels": [u for _, _, u in rows],
    }


def timed(call) -> float:
    started = time.perf_counter()
    call()
    return time.perf_counter() - started


def run(config: ThroughputConfig) -> dict:
    base_url = start(config)
    users = most_history(open_store(config.app.store_location), config.users)
    pairs_per_round = config.batch // 2
    rounds = max(1, config.requests // pairs_per_round)
    series = {"get_reward": 0.0, "v1_score": 0.0, "v1_score_n1_m0": 0.0}
    # Every prompt distinct, across paths, rounds and runs: the embedding cache is on disk, and
    # an RL policy's completions are new text.
    next_text = itertools.count(time.time_ns())

    def pairs(n: int = pairs_per_round) -> list[dict]:
        return [request_body(config, users[j % len(users)], next(next_text)) for j in range(n)]

    load = {"start": os.getloadavg()[0]}
    with httpx.Client(base_url=base_url, timeout=300) as http:

        def get_reward(bodies: list[dict]) -> None:
            params = {"method": config.method}
            http.post("/get_reward", json=reward_rows(bodies), params=params).raise_for_status()

        def score_each(bodies: list[dict], **tts: int) -> None:
            for body in bodies:
                http.post("/v1/score", json=body | tts).raise_for_status()

        get_reward(pairs(2))  # warm-up: models loaded, prototypes on their shards
        score_each(pairs(2))
        score_each(pairs(2), n=1, m=0)
        for _ in range(rounds):
            series["get_reward"] += timed(lambda: get_reward(pairs()))
            series["v1_score"] += timed(lambda: score_each(pairs()))
            series["v1_score_n1_m0"] += timed(lambda: score_each(pairs(), n=1, m=0))
    load["end"] = os.getloadavg()[0]  # the box is shared: how busy it was
    rewards = 2 * pairs_per_round * rounds
    per_s = {name: rewards / seconds for name, seconds in series.items()}
    return {
        "load_average_1m": load,
        "method": config.method,
        "batch": config.batch,
        "rounds": rounds,
        "rewards_per_path": rewards,
        "users": users,
        "scaling_v1_score": {"n": config.n, "m": config.m},
        "seconds": series,
        "rewards_per_s": per_s,
        "get_reward_vs_v1_score": per_s["get_reward"] / per_s["v1_score"],
        "get_reward_vs_v1_score_n1_m0": per_s["get_reward"] / per_s["v1_score_n1_m0"],
    }


def table(report: dict) -> str:
    calls = {
        "get_reward": f"/get_reward, {report['batch']} rows a call",
        "v1_score": "/v1/score once per pair, n={n}, m={m}".format(**report["scaling_v1_score"]),
        "v1_score_n1_m0": "/v1/score once per pair, n=1, m=0",
    }
    best = report["rewards_per_s"]["get_reward"]
    lines = [
        f"method {report['method']}, {report['rewards_per_path']} rewards per path",
        "| path | seconds | rewards/s | /get_reward is |",
        "|---|---|---|---|",
    ]
    for name, label in calls.items():
        rate = report["rewards_per_s"][name]
        lines.append(
            f"| {label} | {report['seconds'][name]:.1f} | {rate:.1f} | {best / rate:.1f}x |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    import ray
    from ray import serve

    config = parse_config(ThroughputConfig, argv, description=__doc__)
    try:
        report = run(config)
    finally:
        serve.shutdown()
        ray.shutdown()
    print(table(report))
    config.out.parent.mkdir(parents=True, exist_ok=True)
    config.out.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main(sys.argv[1:])
