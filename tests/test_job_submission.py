"""A job submitted to a real Ray head through the Jobs API, as on a cluster."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.ray
REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def ray_head(tmp_path, monkeypatch):
    """`ray start --head --block` in its own process group: stopping it stops only this head
    (plain `ray stop` would also stop the test session's Ray). Loopback only, so without
    Ray's token authentication, on the head and in this client alike."""
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    dashboard = free_port()
    head = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ray.scripts.scripts",
            "start",
            "--head",
            "--block",
            "--node-ip-address=127.0.0.1",
            f"--port={free_port()}",
            "--num-cpus=1",
            "--include-dashboard=true",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={dashboard}",
            # Every port of its own: other Ray instances on this machine hold the defaults.
            f"--dashboard-agent-listen-port={free_port()}",
            f"--dashboard-agent-grpc-port={free_port()}",
            f"--runtime-env-agent-port={free_port()}",
            f"--metrics-export-port={free_port()}",
            f"--ray-client-server-port={free_port()}",
            "--disable-usage-stats",
        ],
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    yield f"http://127.0.0.1:{dashboard}"
    os.killpg(head.pid, signal.SIGKILL)  # a throwaway head: a graceful stop takes ~30 s
    head.wait(60)


def test_evaluate_job_submitted_through_the_jobs_api(ray_head, tmp_path, embedding_cache):
    from ray.job_submission import JobStatus, JobSubmissionClient

    out = tmp_path / "results"
    entrypoint = (
        f"python -m jobs.evaluate --max_users 30 --k 0,4 --n_boot 100 --out {out} "
        f"--cache_dir {embedding_cache}"
    )
    # The head's dashboard and job agent take a while to come up: over 180 s on a loaded box.
    deadline = time.monotonic() + 360
    while True:
        try:
            client = JobSubmissionClient(ray_head)
            job = client.submit_job(entrypoint=entrypoint, runtime_env={"working_dir": str(REPO)})
            break
        except (ConnectionError, RuntimeError):
            if time.monotonic() > deadline:
                raise
            time.sleep(3)
    deadline = time.monotonic() + 600
    while not (status := client.get_job_status(job)).is_terminal():
        assert time.monotonic() < deadline, client.get_job_logs(job)[-3000:]
        time.sleep(2)
    logs = client.get_job_logs(job)
    assert status == JobStatus.SUCCEEDED, logs[-3000:]
    assert "| bt_global |" in logs
    rows = json.loads((out / "accuracy.json").read_text())["rows"]
    assert {r["method"] for r in rows} == {"bt_global", "bt_user", "lowrank"}
