"""Serve overhead and sampler scaling, measured against in-process scoring in the same run.

    python -m bench.serve_latency --requests 100 --n 8 --m 4
    python -m tests.tiny_lm /tmp/tiny-lm     # or any causal LM folder (a trained judge)
    python -m bench.serve_latency --method genrm --app.genrm.backend.model /tmp/tiny-lm \
        --app.genrm.sampling.max_new_tokens 128 --app.fanout 2 --requests 30 \
        --out bench/results/serve_latency_genrm.json   # N split over two sampler calls

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
from collections import Counter
from pathlib import Path

from bench.service import ServeBenchConfig, latency_summary, request_body, start
from personal_rm.config import parse_config


class LatencyBenchConfig(ServeBenchConfig):
    concurrency: int = 8
    out: Path = Path("bench/results/serve_latency.json")


def in_process(config: LatencyBenchConfig, user_id: str) -> list[float]:
    import torch

    from personal_rm.embed import CachedEncoder, MiniLMEncoder
    from personal_rm.pgenrm.scaling import scale
    from personal_rm.serving.state import Frontend, load_router, load_shard, neighbour_histories
    from personal_rm.serving.store import SQLiteFeedbackStore
    from serve_app.api import LIMITS
    from serve_app.sampler import build_judges

    torch.set_num_threads(1)  # what each replica gets
    encoder = CachedEncoder(MiniLMEncoder(), config.cache_dir)
    router = load_router(config.app.state_dir, encoder)
    judge = build_judges(config.app)[config.method]
    store = SQLiteFeedbackStore(config.app.store_path)
    frontend = Frontend(router, store, encoder, LIMITS.max_history)
    shards = {}
    scaling = config.app.scaling.model_copy(update={"n": config.n, "m": config.m})
    seconds = []
    for i in range(config.requests + 5):
        body = request_body(config, user_id, i)
        started = time.perf_counter()
        prep = frontend.prepare(user_id, body["prompt"], body["responses"])
        shard = shards.setdefault(prep.prototype, load_shard(config.app.state_dir, prep.prototype))
        near = shard.neighbours(prep.vector, config.m, user_id)
        histories = neighbour_histories(shard, store, near, config.method, config.app.text_history)
        history, request = prep.judge_inputs(config.method)
        scale(
            judge, request, history, len(history), dict(zip(near, histories, strict=True)), scaling
        )
        if i >= 5:  # warm-up: caches, first-call allocations
            seconds.append(time.perf_counter() - started)
    return seconds


async def over_http(
    base_url: str, bodies: list[dict], concurrency: int
) -> tuple[list[float], float, Counter]:
    """Latencies of bodies[5:] (the first 5 warm up), their wall time, and status codes. A 503
    (no chain parsed: a random-weight LLM's usual answer) did all the work of a 200 and is
    timed like one; any other error stops the benchmark."""
    import httpx

    limit = asyncio.Semaphore(concurrency)
    seconds: list[float] = []
    statuses: Counter = Counter()

    async def one(client: httpx.AsyncClient, body: dict) -> None:
        async with limit:
            started = time.perf_counter()
            response = await client.post("/v1/score", json=body)
            if response.status_code != 503:
                response.raise_for_status()
            seconds.append(time.perf_counter() - started)
            statuses[response.status_code] += 1

    async with httpx.AsyncClient(base_url=base_url, timeout=120) as client:
        for body in bodies[:5]:
            await one(client, body)
        seconds.clear()
        statuses.clear()
        started = time.perf_counter()
        await asyncio.gather(*(one(client, b) for b in bodies[5:]))
        return seconds, time.perf_counter() - started, statuses


def run(config: LatencyBenchConfig) -> dict:
    from ray import serve

    from personal_rm.serving.store import SQLiteFeedbackStore
    from serve_app.deploy import deploy

    base_url = start(config)
    user_id = SQLiteFeedbackStore(config.app.store_path).users()[0]
    bodies = [request_body(config, user_id, i) for i in range(config.requests + 5)]
    local = latency_summary(in_process(config, user_id))
    sequential, _, statuses = asyncio.run(over_http(base_url, bodies, 1))
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
        seconds, wall, more = asyncio.run(over_http(base_url, bodies, config.concurrency))
        throughput[replicas] = {"requests_per_s": len(seconds) / wall, **latency_summary(seconds)}
        statuses += more
    serve.shutdown()
    report = {
        "method": config.method,
        "n": config.n,
        "m": config.m,
        "app": config.app.model_dump(mode="json"),
        "in_process": local,
        "serve_sequential": served,
        "p50_ratio": served["p50_ms"] / local["p50_ms"],
        "p99_ratio": served["p99_ms"] / local["p99_ms"],
        "throughput": throughput,
        "throughput_ratio_2_vs_1": throughput[2]["requests_per_s"]
        / throughput[1]["requests_per_s"],
        "http_statuses": dict(statuses),
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
    print(f"HTTP statuses of the measured requests: {dict(statuses)}")
    config.out.parent.mkdir(parents=True, exist_ok=True)
    config.out.write_text(json.dumps(report, indent=2))
    return report


def main(argv: list[str] | None = None) -> None:
    run(parse_config(LatencyBenchConfig, argv, description=__doc__))


if __name__ == "__main__":
    main(sys.argv[1:])
