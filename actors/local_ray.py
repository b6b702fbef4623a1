"""A private local Ray whose own workers can find it again: for jobs and tests on shared boxes.

Ray's state API, which Ray Train's placement-group cleaner uses to notice that a Train
controller died, looks its cluster up from the environment; on a machine with several Ray
clusters that is the latest `ray start`ed one, not necessarily ours. The cleaner then fails,
and a Train run whose controller was killed (a Tune trial stopped by ASHA, an interrupted
sweep) keeps its workers' CPUs reserved until Ray shuts down; a sweep starves. Pinning the API
server address in the job's runtime environment fixes that, and `address="local"` keeps
`ray.init` from joining someone else's cluster.

`verbose=False` keeps a job's console to what the job prints: Ray's driver logs at warnings
and up, and no forwarding of workers' and actors' output (Ray Train's per-epoch "Reporting
training result" lines, Serve's replica logs). Errors still reach the driver as exceptions,
and every process's log stays in the session's log folder.
"""

from __future__ import annotations

import logging
import os
import socket
from typing import Any

import ray


def init_local_ray(**kwargs: Any) -> None:
    """`ray.init` a new local instance (kwargs as for `ray.init`: num_cpus, ...)."""
    with socket.socket() as probe:  # a free port for the dashboard, which serves the state API
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    api = f"http://127.0.0.1:{port}"
    os.environ["RAY_API_SERVER_ADDRESS"] = api  # this driver's own state-API calls too
    ray.init(
        address="local",
        include_dashboard=True,
        dashboard_port=port,
        runtime_env={"env_vars": {"RAY_API_SERVER_ADDRESS": api}},
        **kwargs,
    )


def connect(address: str | None = None, verbose: bool = True, **kwargs: Any) -> bool:
    """The cluster a job runs on: `address`, else the one `ray job submit` names in
    RAY_ADDRESS, else a new private local instance. Returns whether this call started Ray
    (and so should shut it down); an already connected process is left as it is."""
    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS")
    logs = {
        "log_to_driver": verbose,
        "logging_level": logging.INFO if verbose else logging.WARNING,
    }
    if address:
        ray.init(address=address, **logs)
    else:
        init_local_ray(**logs, **kwargs)
    return True
