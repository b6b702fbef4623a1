r"""Serve overhead and sampler scaling, measured against in-process scoring in the same run.

    python -m bench.serve_latency --requests 100 --n 8 --m 4
    python -m tests.tiny_lm /tmp/tiny-lm     # or any causal LM folder (a trained judge)
    python -m bench.serve_latency --method genrm --app.genrm.backend.model /tmp/tiny-lm \
        --app.genrm.sampling.max_new_tokens 128 --app.fanout 2 --requests 30 \
        --out bench/results/serve_latency_genrm.json   # N split over two sampler calls
    python -m bench.serve_latency --compare_keys true --requests 200 \
        --out bench/results/serve_latency_auth.json    # the cost of API keys (see below)

1. The same requests scored in-process (frontend + the shard's `shard_scores`, one thread) and
   through HTTP -> ingress -> prototype shard -> chain samplers: p50/p99 and their ratio.
2. Throughput with 1 vs 2 sampler replicas under concurrent load.
Writes `bench/results/serve_latency.json`.

`--compare_keys true` measures only what API keys cost: the same app twice on one Serve, keyless
at / and with keys at /keyed (the limiter on, its rates out of reach), sequential requests
alternating between the two, so that a shared machine's noise falls on both alike.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections import Counter
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import Field

from bench.service import ServeBenchConfig, latency_summary, request_body, start
from personal_rm.config import parse_config

if TYPE_CHECKING:
    from serve_app.auth import KeyRecord


class LatencyBenchConfig(ServeBenchConfig):
    concurrency: int = 8
    compare_keys: bool = Field(False, description="Only Serve p50 with vs without API keys.")
    out: Path = Path("bench/results/serve_latency.json")


def in_process(config: LatencyBenchConfig, user_id: str) -> list[float]:
    import torch

    from personal_rm.embed import CachedEncoder, MiniLMEncoder
    from personal_rm.pgenrm.scaling import sampler_of
    from personal_rm.serving.state import (
        Frontend,
        load_router,
        load_shard,
        neighbour_histories,
        shard_scores,
    )
    from personal_rm.serving.store import open_store
    from serve_app.api import LIMITS
    from serve_app.sampler import build_judges

    torch.set_num_threads(1)  # what each replica gets
    encoder = CachedEncoder(MiniLMEncoder(), config.cache_dir)
    router = load_router(config.app.state_dir, encoder)
    sample = sampler_of(build_judges(config.app)[config.method])
    store = open_store(config.app.store_location)
    frontend = Frontend(router, store, encoder, LIMITS.max_history)
    shards = {}
    scaling = config.app.scaling.model_copy(update={"n": config.n, "m": config.m})
    seconds = []
    for i in range(config.requests + 5):
        body = request_body(config, user_id, i)
        started = time.perf_counter()
        prep = frontend.prepare(user_id, body["prompt"], body["responses"])
        shard = shards.setdefault(prep.prototype, load_shard(config.app.state_dir, prep.prototype))
        histories = partial(
            neighbour_histories, shard, store, method=config.method, limit=config.app.text_history
        )
        history, request = prep.judge_inputs(config.method)
        coroutine = shard_scores(
            shard, sample, user_id, history, prep.vector, request, scaling, histories
        )
        asyncio.run(coroutine)
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

    from personal_rm.serving.store import open_store
    from serve_app.deploy import deploy

    base_url = start(config)
    user_id = open_store(config.app.store_location).users()[0]
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


def with_and_without_keys(config: LatencyBenchConfig) -> dict:
    """Serve latency keyless and with keys, in one run (see the module docstring)."""
    import tempfile

    import httpx
    from ray import serve

    from personal_rm.serving.store import open_store
    from serve_app.app import build_app
    from serve_app.auth import new_key
    from serve_app.deploy import APP_NAME, LOGGING

    base_url = start(config)  # keyless, at /
    key, record = new_key(["score"], samples_per_s=1e9, requests_per_s=1e9)
    keys_file = Path(tempfile.mkdtemp(prefix="latency-keys-")) / "keys.jsonl"
    keys_file.write_text(record.line() + "\n")
    keyed = config.app.model_copy(
        update={"auth": config.app.auth.model_copy(update={"keys_file": keys_file})}
    )
    serve.run(
        build_app(keyed.model_dump()),
        name=f"{APP_NAME}_keyed",
        route_prefix="/keyed",
        logging_config=LOGGING,  # as the keyless app's: access logs would cost time too
    )
    user_id = open_store(config.app.store_location).users()[0]
    paths = {
        "keyless": ("/v1/score", {}),
        "keys": ("/keyed/v1/score", {"Authorization": f"Bearer {key}"}),
    }
    seconds: dict[str, list[float]] = {name: [] for name in paths}
    statuses: Counter = Counter()
    with httpx.Client(base_url=base_url, timeout=120) as client:
        for i in range(config.requests + 5):
            # Distinct prompts per app (no embedding cache hit for the second), order alternated.
            for j, name in enumerate(sorted(paths, reverse=i % 2 == 1)):
                path, headers = paths[name]
                body = request_body(config, user_id, 2 * i + j)
                started = time.perf_counter()
                response = client.post(path, json=body, headers=headers)
                elapsed = time.perf_counter() - started
                if response.status_code != 503:
                    response.raise_for_status()
                statuses[response.status_code] += 1
                if i >= 5:  # warm-up
                    seconds[name].append(elapsed)
    serve.shutdown()
    summary = {name: latency_summary(s) for name, s in seconds.items()}
    report = {
        "method": config.method,
        "n": config.n,
        "m": config.m,
        "requests_each": config.requests,
        "keyless": summary["keyless"],
        "keys": summary["keys"],
        "p50_ratio_keys_vs_keyless": summary["keys"]["p50_ms"] / summary["keyless"]["p50_ms"],
        "p99_ratio_keys_vs_keyless": summary["keys"]["p99_ms"] / summary["keyless"]["p99_ms"],
        "auth_check_us": auth_check_us(record, key),
        "http_statuses": dict(statuses),
    }
    print(
        "| Serve, sequential | p50 ms | p99 ms | p50 ratio |\n|---|---|---|---|\n"
        + "\n".join(
            f"| {name} | {summary[name]['p50_ms']:.1f} | {summary[name]['p99_ms']:.1f} "
            f"| {summary[name]['p50_ms'] / summary['keyless']['p50_ms']:.3f}x |"
            for name in ("keyless", "keys")
        )
    )
    print(f"in-process authenticate + authorize: {report['auth_check_us']:.1f} us per request")
    config.out.parent.mkdir(parents=True, exist_ok=True)
    config.out.write_text(json.dumps(report, indent=2))
    return report


def auth_check_us(record: KeyRecord, key: str, calls: int = 20_000) -> float:
    """What the ingress itself spends on a key: parse, hash, compare, scope, user, buckets."""
    from serve_app.auth import Auth
    from serve_app.config import AuthConfig

    auth = Auth({record.id: record}, AuthConfig())
    header = f"Bearer {key}"
    started = time.perf_counter()
    for _ in range(calls):
        auth.authorize(auth.authenticate(header), "score", ["u"], 12)
    return 1e6 * (time.perf_counter() - started) / calls


def main(argv: list[str] | None = None) -> None:
    config = parse_config(LatencyBenchConfig, argv, description=__doc__)
    with_and_without_keys(config) if config.compare_keys else run(config)


if __name__ == "__main__":
    main(sys.argv[1:])
