r"""Hostile and malformed requests against the running service: no 5xx, and still healthy.

    python -m bench.serve_fuzz --examples 10000
    python -m bench.serve_fuzz --examples 10000 --with_keys true \
        --out bench/results/serve_fuzz_auth.json        # API keys on, Authorization fuzzed too

Hypothesis generates bodies for every endpoint: valid-looking requests with fields dropped,
mistyped, oversized or out of range, injection and control-character strings, unicode, deep
nesting, and plain garbage bytes; user ids in paths likewise. With `--with_keys true` the app
runs with API keys and every request also carries a generated `Authorization` header: none,
valid keys (Bearer and Basic; one of them bound to some users, one score-only), forged and
truncated keys, unknown schemes, random text and bytes, broken base64, a 9,000-character
token. Every answer must be < 500. Writes `bench/results/serve_fuzz.json`.
"""

from __future__ import annotations

import base64
import json
import sys
import tempfile
from collections import Counter, defaultdict
from pathlib import Path
from urllib.parse import quote

from pydantic import Field

from bench.service import ServeBenchConfig, start
from personal_rm.config import parse_config


class FuzzBenchConfig(ServeBenchConfig):
    examples: int = 10_000
    with_keys: bool = Field(False, description="API keys on; fuzz the Authorization header too.")
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


def header_value(text: str) -> bytes:
    """What a client can put on the wire at all (h11 refuses CR, LF, NUL and edge spaces)."""
    return " ".join(text.replace("\x00", "").split()).encode("latin-1", "replace")


def authorization(keys: list[str]):
    """(kind, header or None): the kinds are what the report counts statuses by."""
    from hypothesis import strategies as st

    key = st.sampled_from(keys)
    junk = st.one_of(
        st.text(max_size=80), st.binary(max_size=80).map(lambda b: b.decode("latin-1"))
    )
    basic = lambda raw: "Basic " + base64.b64encode(raw).decode()  # noqa: E731
    kinds = {
        "none": st.none(),
        "valid_bearer": key.map(lambda k: f"Bearer {k}"),
        "valid_basic": key.map(lambda k: basic(f"user:{k}".encode())),
        "forged_key": st.tuples(key, st.integers(0, 60), junk).map(
            lambda t: f"Bearer {t[0][: t[1]]}{t[2]}"
        ),
        "scheme_junk": st.tuples(
            st.sampled_from(
                ["Bearer ", "Basic ", "bearer", "Token ", "", "Bearer prm_", "Basic =="]
            ),
            junk,
        ).map("".join),
        "basic_bytes": st.binary(max_size=200).map(basic),
        "huge": st.just("Bearer prm_" + "x" * 9000),
    }
    weighted = [*kinds.items(), *[(k, kinds[k]) for k in ("valid_bearer",) * 3]]
    return st.one_of(
        [s.map(lambda v, k=kind: (k, v if v is None else header_value(v))) for kind, s in weighted]
    )


def fuzz_keys(config: FuzzBenchConfig) -> tuple[FuzzBenchConfig, list[str]]:
    """The config with a keys file of three keys (any user; LLMFAO's users only; score only),
    and the keys, which the fuzzer sends among its headers."""
    from serve_app.auth import new_key

    made = [
        new_key(["score", "feedback"]),
        new_key(["score", "feedback"], ["llmfao_*"]),
        new_key(["score"]),
    ]
    keys_file = Path(tempfile.mkdtemp(prefix="fuzz-keys-")) / "keys.jsonl"
    keys_file.write_text("".join(record.line() + "\n" for _, record in made))
    auth = config.app.auth.model_copy(update={"keys_file": keys_file})
    app = config.app.model_copy(update={"auth": auth})
    return config.model_copy(update={"app": app}), [key for key, _ in made]


def run(config: FuzzBenchConfig) -> dict:
    import httpx
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st
    from ray import serve

    keys: list[str] = []
    if config.with_keys:
        config, keys = fuzz_keys(config)
    base_url = start(config)
    statuses: Counter[int] = Counter()
    by_header: defaultdict[str, Counter[int]] = defaultdict(Counter)
    server_errors: list[tuple[str, str, int]] = []
    headers_strategy = authorization(keys) if keys else st.just(("none", None))

    with httpx.Client(base_url=base_url, timeout=60) as client:

        @settings(
            max_examples=config.examples,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(strategies(), headers_strategy)
        def attack(case: tuple[str, str], header: tuple[str, bytes | None]) -> None:
            (path, body), (kind, value) = case, header
            headers = {"authorization": value} if value is not None else {}
            if path == "GET":
                segment = quote((body or "x").encode("utf-8", "surrogatepass"), safe="")
                response = client.get("/v1/users/" + segment, headers=headers)
            else:
                response = client.post(
                    path,
                    content=body.encode("utf-8", "surrogatepass"),
                    headers={"content-type": "application/json", **headers},
                )
            statuses[response.status_code] += 1
            by_header[kind][response.status_code] += 1
            if response.status_code >= 500:
                server_errors.append((path, body[:200], response.status_code))

        attack()
        healthy = client.get("/healthz").status_code == 200
    serve.shutdown()
    report = {
        "with_keys": config.with_keys,
        "requests": sum(statuses.values()),
        "statuses": dict(statuses),
        "statuses_by_authorization": {k: dict(v) for k, v in sorted(by_header.items())},
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
