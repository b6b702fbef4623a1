"""Hostile and malformed requests against the running service: no 5xx, and still healthy.

    python -m bench.serve_fuzz --examples 10000

Hypothesis generates bodies for every endpoint: valid-looking requests with fields dropped,
mistyped, oversized or out of range, injection and control-character strings, unicode, deep
nesting, and plain garbage bytes; user ids in paths likewise. Every answer must be < 500.
Writes `bench/results/serve_fuzz.json`.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path
from urllib.parse import quote

from bench.service import ServeBenchConfig, start
from personal_rm.config import parse_config


class FuzzBenchConfig(ServeBenchConfig):
    examples: int = 10_000
    out: Path = Path("bench/results/serve_fuzz.json")


def strategies():
    from hypothesis import strategies as st

    hostile = st.sampled_from(
        [
            "../../etc/passwd",
            "'; DROP TABLE feedback;--",
            "${jndi:x}",
            "<script>",
            "\x00",
            "a" * 9000,
            "🙂" * 100,
            "%s%n",
            "\ud7ff",
        ]
    )
    text = st.one_of(st.text(max_size=50), hostile)
    scalar = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), text)
    value = st.recursive(
        scalar,
        lambda inner: st.one_of(
            st.lists(inner, max_size=4), st.dictionaries(text, inner, max_size=4)
        ),
        max_leaves=12,
    )
    score = st.fixed_dictionaries(
        {},
        optional={
            "user_id": st.one_of(text, value),
            "prompt": st.one_of(text, value),
            "responses": st.one_of(st.lists(text, max_size=20), value),
            "history": st.one_of(
                st.lists(st.dictionaries(text, text, max_size=3), max_size=3), value
            ),
            "method": st.one_of(st.sampled_from(["mrm", "rubric", "genrm", "x"]), value),
            "n": st.one_of(st.integers(-5, 100), value),
            "m": st.one_of(st.integers(-5, 100), value),
            "return_chains": value,
            "extra": value,
        },
    )
    feedback = st.fixed_dictionaries(
        {},
        optional={k: st.one_of(text, value) for k in ("user_id", "prompt", "chosen", "rejected")},
    )
    return st.one_of(
        st.tuples(st.just("/v1/score"), score.map(json.dumps)),
        st.tuples(
            st.just("/v1/score/batch"),
            st.dictionaries(st.just("requests"), st.lists(score, max_size=3)).map(json.dumps),
        ),
        st.tuples(st.just("/v1/feedback"), feedback.map(json.dumps)),
        st.tuples(
            st.sampled_from(["/v1/score", "/v1/feedback"]),
            st.binary(max_size=200).map(lambda b: b.decode("latin-1")),
        ),
        st.tuples(st.just("GET"), text),
    )


def run(config: FuzzBenchConfig) -> dict:
    import httpx
    from hypothesis import HealthCheck, given, settings
    from ray import serve

    base_url = start(config)
    statuses: Counter[int] = Counter()
    server_errors: list[tuple[str, str, int]] = []

    with httpx.Client(base_url=base_url, timeout=60) as client:

        @settings(
            max_examples=config.examples,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(strategies())
        def attack(case: tuple[str, str]) -> None:
            path, body = case
            if path == "GET":
                segment = quote((body or "x").encode("utf-8", "surrogatepass"), safe="")
                response = client.get("/v1/users/" + segment)
            else:
                response = client.post(
                    path,
                    content=body.encode("utf-8", "surrogatepass"),
                    headers={"content-type": "application/json"},
                )
            statuses[response.status_code] += 1
            if response.status_code >= 500:
                server_errors.append((path, body[:200], response.status_code))

        attack()
        healthy = client.get("/healthz").status_code == 200
    serve.shutdown()
    report = {
        "requests": sum(statuses.values()),
        "statuses": dict(statuses),
        "server_errors": len(server_errors),
        "examples_of_5xx": server_errors[:10],
        "healthy_after": healthy,
    }
    print(
        "| requests | 2xx | 4xx | 5xx | healthy after |\n|---|---|---|---|---|\n"
        f"| {report['requests']} | {sum(v for k, v in statuses.items() if k < 300)} "
        f"| {sum(v for k, v in statuses.items() if 400 <= k < 500)} | {len(server_errors)} "
        f"| {healthy} |"
    )
    config.out.parent.mkdir(parents=True, exist_ok=True)
    config.out.write_text(json.dumps(report, indent=2))
    return report


def main(argv: list[str] | None = None) -> None:
    run(parse_config(FuzzBenchConfig, argv, description=__doc__))


if __name__ == "__main__":
    main(sys.argv[1:])
