"""Serve overhead and sampler scaling, measured against in-process scoring in the same run.

    python -m bench.serve_latency --requests 100 --n 8 --m 4

1. The same requests scored in-process (frontend + `scaling.scale`, one thread) and through
   HTTP -> ingress -> prototype shard -> chain samplers: p50/p99 and their ratio.
2. Throughput with 1 vs 2 sampler replicas under concurrent load.
Writes `bench/results/serve_latency.json`.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path

from bench.service import ServeBenchConfig, latency_summary, request_body, start
from personal_rm.config import parse_config


class LatencyBenchConfig(ServeBenchConfig):
    concurrency: int = 8
    out: Path = Path("bench/results/serve_latency.json")


def in_process(config: LatencyBenchConfig, user_id: str) -> list[float]:
    import torch

    from personal_rm.embed import CachedEncoder, MiniLMEncoder
    from personal_rm.scaling import scale
    from personal_rm.serving import Frontend, load_router, load_shard
    from personal_rm.store import SQLiteFeedbackStore
    from serve_app.api import LIMITS

    torch.set_num_threads(1)  # what each replica gets
    encoder = CachedEncoder(MiniLMEncoder(), config.cache_dir)
    router = load_router(config.app.state_dir, encoder)
    frontend = Frontend(
        router, SQLiteFeedbackStore(config.app.store_path), encoder, LIMITS.max_history
    )
    shards = {}
    scaling = config.app.scaling.model_copy(update={"n": config.n, "m": config.m})
    seconds = []
    for i in range(config.requests + 5):
        body = request_body(config, user_id, i)
        started = time.perf_counter()
        prep = frontend.prepare(user_id, body["prompt"], body["responses"])
        shard = shards.setdefault(prep.prototype, load_shard(config.app.state_dir, prep.prototype))
        near = {u: shard.history(u) for u in shard.neighbours(prep.vector, config.m, user_id)}
        scale(
            router.judges[config.method],
            prep.request,
            prep.history,
            len(prep.history),
            near,
            scaling,
        )
        if i >= 5:  # warm-up: caches, first-call allocations
            seconds.append(time.perf_counter() - started)
    return seconds


async def over_http(
    base_url: str, bodies: list[dict], concurrency: int
) -> tuple[list[float], float]:
    import httpx

    limit = asyncio.Semaphore(concurrency)
    seconds: list[float] = []

    async def one(client: httpx.AsyncClient, body: dict) -> None:
        async with limit:
            started = time.perf_counter()
            (await client.post("/v1/score", json=body)).raise_for_status()
            seconds.append(time.perf_counter() - started)

    async with httpx.AsyncClient(base_url=base_url, timeout=120) as client:
        for body in bodies[:5]:
            await one(client, body)
        seconds.clear()
        started = time.perf_counter()
        await asyncio.gather(*(one(client, b) for b in bodies[5:]))
        return seconds, time.perf_counter() - started


def run(config: LatencyBenchConfig) -> dict:
    from ray import serve

    from jobs.serve import deploy
    from personal_rm.store import SQLiteFeedbackStore

    base_url = start(config)
    user_id = SQLiteFeedbackStore(config.app.store_path).users()[0]
    bodies = [request_body(config, user_id, i) for i in range(config.requests + 5)]
    local = latency_summary(in_process(config, user_id))
    sequential, _ = asyncio.run(over_http(base_url, bodies, 1))
    served = latency_summary(sequential)
    throughput = {}
    for replicas in (1, 2):
        scaled = config.app.model_copy(
            update={
                "samplers": config.app.samplers.model_copy(
                    update={"min_replicas": replicas, "max_replicas": replicas}
                )
            }
        )
        deploy(config.model_copy(update={"app": scaled}))
        seconds, wall = asyncio.run(over_http(base_url, bodies, config.concurrency))
        throughput[replicas] = {"requests_per_s": len(seconds) / wall, **latency_summary(seconds)}
    serve.shutdown()
    report = {
        "method": config.method,
        "n": config.n,
        "m": config.m,
        "in_process": local,
        "serve_sequential": served,
        "p50_ratio": served["p50_ms"] / local["p50_ms"],
        "p99_ratio": served["p99_ms"] / local["p99_ms"],
        "throughput": throughput,
        "throughput_ratio_2_vs_1": throughput[2]["requests_per_s"]
        / throughput[1]["requests_per_s"],
    }
    print(
        f"| path | p50 ms | p99 ms | ratio to in-process (p50) |\n|---|---|---|---|\n"
        f"| in-process | {local['p50_ms']:.1f} | {local['p99_ms']:.1f} | 1.00x |\n"
        f"| HTTP -> Serve | {served['p50_ms']:.1f} | {served['p99_ms']:.1f} "
        f"| {report['p50_ratio']:.2f}x |\n"
    )
    print(
        f"| sampler replicas | req/s at concurrency {config.concurrency} | p50 ms | p99 ms |\n"
        "|---|---|---|---|\n"
        + "\n".join(
            f"| {r} | {t['requests_per_s']:.1f} | {t['p50_ms']:.1f} | {t['p99_ms']:.1f} |"
            for r, t in throughput.items()
        )
    )
    config.out.parent.mkdir(parents=True, exist_ok=True)
    config.out.write_text(json.dumps(report, indent=2))
    return report


def main(argv: list[str] | None = None) -> None:
    run(parse_config(LatencyBenchConfig, argv, description=__doc__))


if __name__ == "__main__":
    main(sys.argv[1:])
