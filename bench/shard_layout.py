r"""Multiplexed prototype shards vs fixed per-prototype-group deployments, in the same run.

    python -m bench.shard_layout --state.prototypes.k 16 \
        --app.state_dir results/state_k16 --app.store_path results/feedback_k16.sqlite3

The same requests, from users spread over every prototype, through the app deployed in each
layout with the same number of shard replicas: `multiplexed` (one shard deployment of
`replicas` replicas; the ingress tags requests with their prototype and Serve routes them to
a replica that has it loaded, loading it on one otherwise) and `grouped` (`replicas`
deployments of one replica; prototype p always on deployment p % replicas). Each layout gets
a cold pass (prototypes loaded on first use) and warm passes; reported: p50 / p99 latency and
throughput at a fixed concurrency, and the ratio grouped / multiplexed. Writes
bench/results/shard_layout.json.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

from bench.serve_latency import over_http
from bench.service import ServeBenchConfig, latency_summary, request_body, start
from personal_rm.config import parse_config

LAYOUTS = ("multiplexed", "grouped")


class LayoutBenchConfig(ServeBenchConfig):
    requests: int = 96
    warm_passes: int = 2
    replicas: int = 2
    concurrency: int = 8
    out: Path = Path("bench/results/shard_layout.json")


def layout(config: LayoutBenchConfig, name: str) -> LayoutBenchConfig:
    fixed = {"min_replicas": 1, "max_replicas": 1}
    if name == "multiplexed":
        fixed = {"min_replicas": config.replicas, "max_replicas": config.replicas}
    app = config.app.model_copy(
        update={
            "shard_layout": name,
            "shard_groups": config.replicas,
            "shards": config.app.shards.model_copy(update=fixed),
        }
    )
    return config.model_copy(update={"app": app})


def run(config: LayoutBenchConfig) -> dict:
    from ray import serve

    from personal_rm.serving.store import open_store
    from serve_app.deploy import deploy

    base_url = start(layout(config, LAYOUTS[0]))
    users = open_store(config.app.store_location).users()
    # 5 warm-up requests (over_http drops them) from one user, then users round-robin.
    bodies = [request_body(config, users[0], i) for i in range(5)]
    bodies += [request_body(config, users[i % len(users)], i) for i in range(config.requests)]
    report: dict = {"config": config.model_dump(mode="json"), "users": len(users)}
    for name in LAYOUTS:
        deploy(layout(config, name))  # a fresh app: every prototype starts unloaded
        passes = []
        for _ in range(1 + config.warm_passes):
            seconds, wall, _ = asyncio.run(over_http(base_url, bodies, config.concurrency))
            passes.append({"requests_per_s": len(seconds) / wall, **latency_summary(seconds)})
        warm = passes[1:]
        report[name] = {
            "cold": passes[0],
            "warm": {
                key: sum(p[key] for p in warm) / len(warm)
                for key in ("requests_per_s", "p50_ms", "p99_ms")
            },
        }
    serve.shutdown()
    for phase in ("cold", "warm"):
        grouped, multiplexed = report["grouped"][phase], report["multiplexed"][phase]
        report[f"{phase}_grouped_over_multiplexed"] = {
            key: grouped[key] / multiplexed[key] for key in ("requests_per_s", "p50_ms", "p99_ms")
        }
    print(f"{config.requests} requests from {len(users)} users, concurrency {config.concurrency}")
    print("| layout | phase | req/s | p50 ms | p99 ms |\n|---|---|---|---|---|")
    for name in LAYOUTS:
        for phase in ("cold", "warm"):
            row = report[name][phase]
            print(
                f"| {name} | {phase} | {row['requests_per_s']:.2f} | {row['p50_ms']:.0f} | "
                f"{row['p99_ms']:.0f} |"
            )
    for phase in ("cold", "warm"):
        ratio = report[f"{phase}_grouped_over_multiplexed"]
        print(
            f"grouped / multiplexed, {phase}: throughput {ratio['requests_per_s']:.2f}x, "
            f"p50 {ratio['p50_ms']:.2f}x, p99 {ratio['p99_ms']:.2f}x"
        )
    config.out.parent.mkdir(parents=True, exist_ok=True)
    config.out.write_text(json.dumps(report, indent=2))
    return report


def main(argv: list[str] | None = None) -> None:
    run(parse_config(LayoutBenchConfig, argv, description=__doc__))


if __name__ == "__main__":
    main(sys.argv[1:])
