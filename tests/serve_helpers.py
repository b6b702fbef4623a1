"""Shared by the tests that start the scoring service: a free port and a small state's config."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

from serve_app.deploy import ServeJobConfig


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def small_serve_config(root: Path, max_users: int, **app: Any) -> ServeJobConfig:
    """A state of `max_users` LLMFAO users that builds in seconds (5 epochs, 3 prototypes), its
    files under `root`, on a free port; `app` adds to the app's settings (auth, genrm, ...)."""
    return ServeJobConfig.model_validate(
        {
            "max_users": max_users,
            "cache_dir": str(root / "cache"),
            "port": free_port(),
            "state": {
                "mrm": {"epochs": 5},
                "rubric": {"training": {"epochs": 5}},
                "prototypes": {"k": 3},
            },
            "app": {
                "state_dir": str(root / "state"),
                "store_path": str(root / "feedback.sqlite3"),
                **app,
            },
        }
    )
