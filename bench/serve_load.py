"""Sustained load with a chain-sampler replica killed mid-run: what fails, what is lost.

    python -m bench.serve_load --seconds 60 --kill_at 20

A bounded asyncio client (loopback only) sends score requests and feedback (every fifth call)
at a fixed concurrency for `seconds`; at `kill_at` one sampler replica's actor is killed with
`ray.kill`. Reports requests that failed even after the client's retries, 5xx answers seen
before retrying, and feedback rows acknowledged but missing from the store afterwards.
Writes `bench/results/serve_load.json`.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
import uuid
from pathlib import Path

from bench.service import ServeBenchConfig, latency_summary, request_body, start
from personal_rm.config import parse_config

RETRIES = 3


class LoadBenchConfig(ServeBenchConfig):
    seconds: float = 60.0
    kill_at: float = 20.0
    concurrency: int = 6
    out: Path = Path("bench/results/serve_load.json")


def kill_one_sampler() -> str:
    import ray
    from ray.util.state import list_actors

    replicas = [
        a
        for a in list_actors(filters=[("state", "=", "ALIVE")], limit=1000)
        if a.class_name.endswith("ChainSampler")
    ]
    victim = replicas[0]
    ray.kill(ray.get_actor(victim.name, namespace="serve"), no_restart=True)
    return victim.name


async def load(config: LoadBenchConfig, base_url: str, user_id: str) -> dict:
    import httpx

    stats = {"ok": 0, "failed": 0, "5xx_seen": 0, "retried": 0, "killed": None}
    acked: list[tuple[str, str]] = []
    seconds: list[float] = []
    deadline = time.monotonic() + config.seconds

    async def call(client: httpx.AsyncClient, path: str, body: dict) -> httpx.Response | None:
        for attempt in range(RETRIES):
            try:
                response = await client.post(path, json=body)
                if response.status_code < 500:
                    return response
                stats["5xx_seen"] += 1
            except httpx.TransportError:
                pass
            stats["retried"] += attempt < RETRIES - 1
            await asyncio.sleep(0.2 * 2**attempt)
        return None

    async def worker(client: httpx.AsyncClient, worker_id: int) -> None:
        i = 0
        while time.monotonic() < deadline:
            i += 1
            started = time.perf_counter()
            if i % 5 == 0:
                marker = uuid.uuid4().hex
                body = {
                    "user_id": f"load-{worker_id}",
                    "prompt": f"feedback {marker}",
                    "chosen": "a",
                    "rejected": "b",
                }
                response = await call(client, "/v1/feedback", body)
                if response is not None and response.status_code == 200:
                    acked.append((body["user_id"], body["prompt"]))
            else:
                response = await call(client, "/v1/score", request_body(config, user_id, i))
            ok = response is not None and response.status_code == 200
            stats["ok" if ok else "failed"] += 1
            seconds.append(time.perf_counter() - started)

    async def killer() -> None:
        await asyncio.sleep(config.kill_at)
        stats["killed"] = await asyncio.to_thread(kill_one_sampler)

    async with httpx.AsyncClient(base_url=base_url, timeout=60) as client:
        await asyncio.gather(killer(), *(worker(client, w) for w in range(config.concurrency)))
    return {"stats": stats, "acked": acked, "latency": latency_summary(seconds)}


def run(config: LoadBenchConfig) -> dict:
    from ray import serve

    from personal_rm.serving.store import SQLiteFeedbackStore

    app = config.app.model_copy(
        update={
            "samplers": config.app.samplers.model_copy(
                update={"min_replicas": 2, "max_replicas": 2}
            )
        }
    )
    config = config.model_copy(update={"app": app})
    base_url = start(config)
    store = SQLiteFeedbackStore(config.app.store_path)
    user_id = store.users()[0]
    result = asyncio.run(load(config, base_url, user_id))
    serve.shutdown()
    stored = {(u, c.prompt) for u in {u for u, _ in result["acked"]} for c in store.history(u)}
    lost = [row for row in result["acked"] if row not in stored]
    report = {
        **result["stats"],
        "feedback_acked": len(result["acked"]),
        "feedback_lost": len(lost),
        "latency": result["latency"],
        "seconds": config.seconds,
        "kill_at": config.kill_at,
        "concurrency": config.concurrency,
    }
    print(
        "| requests ok | failed after retries | 5xx seen | retries | feedback acked | "
        "feedback lost | p50 ms | p99 ms |\n|---|---|---|---|---|---|---|---|\n"
        f"| {report['ok']} | {report['failed']} | {report['5xx_seen']} | {report['retried']} "
        f"| {report['feedback_acked']} | {report['feedback_lost']} "
        f"| {report['latency']['p50_ms']:.0f} | {report['latency']['p99_ms']:.0f} |"
    )
    print(f"killed sampler replica: {report['killed']}")
    config.out.parent.mkdir(parents=True, exist_ok=True)
    config.out.write_text(json.dumps(report, indent=2))
    return report


def main(argv: list[str] | None = None) -> None:
    run(parse_config(LoadBenchConfig, argv, description=__doc__))


if __name__ == "__main__":
    main(sys.argv[1:])
