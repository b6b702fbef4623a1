"""Shared by the tests that start the scoring service: a free port and a small state's config."""

from __future__ import annotations

import shutil
import socket
from pathlib import Path
from typing import Any

from serve_app.deploy import ServeJobConfig

# Method `genrm` through the rule-based CPU judge: valid chains, no model, no token budget.
RULE_JUDGE = {"backend": {"kind": "heuristic"}, "history_tokens": None, "tokenizer": None}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


STORE = "feedback.sqlite3"


def small_serve_config(state: Path, root: Path, **app: Any) -> ServeJobConfig:
    """The app over a small state in `state` (30 LLMFAO users, 5 epochs, 3 prototypes: it
    builds in seconds), its feedback store under `root`, on a free port; `app` adds to the
    app's settings (auth, genrm, ...)."""
    return ServeJobConfig.model_validate(
        {
            "max_users": 30,
            "cache_dir": str(state / "cache"),
            "port": free_port(),
            "state": {
                "mrm": {"epochs": 5},
                "rubric": {"training": {"epochs": 5}},
                "prototypes": {"k": 3},
            },
            "app": {"state_dir": str(state / "state"), "store_path": str(root / STORE), **app},
        }
    )


def on_small_state(state: Path, root: Path, **app: Any) -> ServeJobConfig:
    """The app over the session's small state (the `small_state` fixture, fitted once), with
    its own copy of the seeded feedback store, since each module's tests write feedback."""
    shutil.copyfile(state / STORE, root / STORE)
    return small_serve_config(state, root, **app)
