"""Run the scoring service locally: build its state if needed, serve it on 127.0.0.1.

    python -m jobs.serve                         # shipped LLMFAO, http://127.0.0.1:8000/docs
    python -m jobs.serve --demo true             # score, post feedback, score again, exit
    serve deploy serve_app/serve_config.yaml     # on a running cluster, from a built state

The state (judges, prototypes) is fitted on the seen users of the data's split; the feedback
store is seeded with every comparison of the data, so every user of it has a history.
"""

from __future__ import annotations

import sys
import threading

from personal_rm.config import parse_config
from personal_rm.serving.state import ROUTER_FILE
from serve_app.deploy import ServeJobConfig, build_server_state, demo, deploy


def run(config: ServeJobConfig) -> None:
    from ray import serve

    from actors.local_ray import connect

    if config.rebuild or not (config.app.state_dir / ROUTER_FILE).exists():
        build_server_state(config)
    connect()
    base_url = deploy(config)
    print(f"serving on {base_url} (OpenAPI docs at {base_url}/docs)")
    if config.demo:
        from personal_rm.serving.store import open_store

        demo(base_url, open_store(config.app.store_location).users()[0])
        serve.shutdown()
        return
    try:
        threading.Event().wait()  # serve until interrupted
    except KeyboardInterrupt:
        serve.shutdown()


def main(argv: list[str] | None = None) -> None:
    run(parse_config(ServeJobConfig, argv, description=__doc__))


if __name__ == "__main__":
    main(sys.argv[1:])
