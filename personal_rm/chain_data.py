"""The chain dataset: one JSONL row per training comparison, in TRL's prompt-completion form.

Every processed comparison gets a row, so a rerun skips it (`done_ids`). A row whose teacher
produced an acceptable chain within its tries has a `completion` (the SFT target) and the
parsed `chain` in (chosen, rejected) order; the others have none and serve only the RL stage,
which needs just the prompt and which shown response the user chose (`label`). A chain is
accepted when it parses, agrees with the user's choice in verdict and in recomputed scores,
and states totals that match its arithmetic: we teach consistent chains only.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

from personal_rm.chains import EvaluationChain
from personal_rm.chains_prompt import render_messages
from personal_rm.judge import Judged, agrees, comparison_id


def accepted_index(judged: Judged) -> int | None:
    """The first sample that is a consistent chain preferring the chosen response."""
    for i, result in enumerate(judged.results):
        if isinstance(result, EvaluationChain) and agrees(result) and not result.totals_disagree():
            return i
    return None


def chain_row(judged: Judged, max_text_chars: int | None, provenance: dict[str, Any]) -> dict:
    task = judged.task
    row: dict[str, Any] = {
        "id": task.id,
        "user_id": task.comparison.user_id,
        "prompt": render_messages(task.request(), max_text_chars),
        "label": task.order.index(0),  # position of the chosen response in the shown order
        "order": list(task.order),
        "history_ids": [comparison_id(h) for h in task.history],
    }
    index = accepted_index(judged)
    if index is not None:
        chain = judged.results[index]
        row["completion"] = [{"role": "assistant", "content": judged.texts[index]}]
        row["chain"] = chain.model_dump(mode="json")
    row["provenance"] = {
        **provenance,
        "tries": len(judged.texts),
        "accepted_try": index,
        "n_agreeing": sum(isinstance(r, EvaluationChain) and agrees(r) for r in judged.results),
    }
    return row


def open_for_append(path: Path) -> TextIO:
    """Append after the last complete row: a run killed mid-write leaves a partial line."""
    if path.exists():
        data = path.read_bytes()
        keep = data.rfind(b"\n") + 1
        if keep < len(data):
            with path.open("r+b") as f:
                f.truncate(keep)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.open("a", encoding="utf-8")


def read_rows(path: Path) -> Iterator[dict]:
    if path.exists():
        with path.open(encoding="utf-8") as lines:
            for line in lines:
                if line.strip():
                    yield json.loads(line)


def done_ids(path: Path) -> set[str]:
    return {row["id"] for row in read_rows(path)}


def sft_rows(path: Path) -> list[dict]:
    return [row for row in read_rows(path) if "completion" in row]
