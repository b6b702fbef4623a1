r"""`method: genrm` served from the trained SmolLM2 judge: chains a real model wrote, over HTTP.

    python -m bench.serve_genrm --app.genrm.backend.model results/smollm2/genrm/sft --name sft
    python -m bench.serve_genrm --app.genrm.backend.kind vllm \
        --app.genrm.backend.model results/smollm2/genrm/sft --app.genrm.backend.dtype bfloat16 \
        --app.genrm.backend.enforce_eager true --app.genrm.backend.max_model_len 2048 --name vllm

Starts the app (building a small state first if its folder has none), then scores, for each
of the `--requests` users with the most history, their latest LLMFAO comparison through
`/v1/score` with `method: genrm`: `n` chains of the user and `m` of prototype neighbours,
chains returned. The store holds all of LLMFAO, so that comparison is in the user's history:
this shows the served path and its cost, not accuracy (`jobs.evaluate --methods genrm`
measures that). Writes `bench/results/serve_genrm_<name>.json`: per request the status, the
scores, the wall time, how many of the returned chains parsed and the first that did.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from pydantic import Field

from bench.service import ServeBenchConfig, most_history, start
from personal_rm.config import parse_config


class ServeGenRMConfig(ServeBenchConfig):
    name: str = Field("sft", description="Names the result file.")
    method: str = Field("genrm", description="Scoring method of the requests.")
    n: int = Field(2, description="Individual-level chains per request.")
    m: int = Field(1, description="Prototype-level chains per request.")
    requests: int = Field(4, description="Requests scored.")
    max_users: int | None = Field(40, description="Users of the small state built if missing.")


def run(config: ServeGenRMConfig) -> dict:
    import httpx
    from ray import serve

    from personal_rm.data import load_comparisons, resolve_dataset
    from personal_rm.serving.store import open_store

    base_url = start(config)
    with open_store(config.app.store_location) as store:
        users = most_history(store, config.requests)
    comparisons = load_comparisons(resolve_dataset(config.data)).comparisons
    picked = [next(c for c in reversed(comparisons) if c.user_id == u) for u in users]
    results = []
    with httpx.Client(base_url=base_url, timeout=1800) as client:
        for c in picked:
            body = {
                "user_id": c.user_id,
                "prompt": c.prompt,
                "responses": [c.chosen, c.rejected],
                "method": config.method,
                "n": config.n,
                "m": config.m,
                "return_chains": True,
            }
            started = time.perf_counter()
            answer = client.post("/v1/score", json=body)
            wall_s = time.perf_counter() - started
            result = answer.json()
            results.append(
                {
                    "status": answer.status_code,
                    "user_id": c.user_id,
                    "scores": result.get("scores"),
                    "preferred": result.get("preferred"),
                    "wall_s": round(wall_s, 1),
                    "parts": result.get("parts"),
                    "parsed_chains": sum(c is not None for c in result.get("chains") or []),
                    "first_parsed_chain": next((c for c in result.get("chains") or [] if c), None),
                    "detail": result.get("detail"),
                }
            )
            print(json.dumps(results[-1])[:400])
    serve.shutdown()
    command = "python -m bench.serve_genrm " + " ".join(sys.argv[1:])
    report = {"command": command, "results": results}
    target = Path(f"bench/results/serve_genrm_{config.name}.json")
    target.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {target}")
    return report


if __name__ == "__main__":  # a vLLM sampler starts its engine core with spawn
    run(parse_config(ServeGenRMConfig, sys.argv[1:], description=__doc__))
