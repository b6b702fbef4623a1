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
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal, TextIO

import numpy as np
from pydantic import Field

from personal_rm.config import Config
from personal_rm.data import Comparison
from personal_rm.data.splits import Split
from personal_rm.pgenrm.chain import EvaluationChain
from personal_rm.pgenrm.llm_judge import Judged, agrees, comparison_id
from personal_rm.pgenrm.prompt import PromptBudget
from personal_rm.prepare import SplitConfig


class JudgeViewConfig(Config):
    """How much of a user's history and of a request the LLM judge reads."""

    history_size: int = Field(
        8, description="h: the user's past comparisons drawn; those within history_tokens shown."
    )
    history_tokens: int | None = Field(
        192, description="Tokens of history examples the judge reads (latest first); None: all h."
    )
    max_text_chars: int | None = Field(
        200, description="Cut the request's prompt and responses to this many characters."
    )
    history_text_chars: int | None = Field(
        100, description="Cut the history's texts to this many characters (None: as the request)."
    )
    tokenizer: str | None = Field(
        "smollm2-135m", description="The judge's model (folder or name): counts history_tokens."
    )

    def budget(self) -> PromptBudget:
        return PromptBudget(
            self.max_text_chars, self.history_tokens, self.tokenizer, self.history_text_chars
        )


class ChainDataConfig(JudgeViewConfig):
    """What the generative-judge jobs read, and how the judge sees it."""

    data: str = Field(
        "llmfao", description="A file in the normalized schema, or a dataset name (llmfao ships)."
    )
    format: str = Field("normalized", description="Input format (see jobs.evaluate --help).")
    on_error: Literal["raise", "skip"] = Field(
        "raise", description="Stop at the first malformed row, or skip and count them."
    )
    max_users: int | None = Field(None, description="Keep this many users (seeded): quick runs.")
    seed: int = Field(0, description="Seed of the user sample, the split, histories and shuffles.")


def load_split(config: ChainDataConfig, split: SplitConfig) -> tuple[list[Comparison], Split]:
    """The comparisons and the same user split that `jobs.evaluate` uses for this seed."""
    from personal_rm.data import resolve_dataset
    from personal_rm.data.formats import load_any
    from personal_rm.data.splits import user_protocol_split

    comparisons = load_any(resolve_dataset(config.data), config.format, on_error=config.on_error)
    comparisons = comparisons.comparisons
    if config.max_users is not None:
        users = sorted({c.user_id for c in comparisons})
        keep = set(np.random.default_rng(config.seed).permutation(users)[: config.max_users])
        comparisons = [c for c in comparisons if c.user_id in keep]
    user_ids = np.array([c.user_id for c in comparisons], dtype=object)
    return comparisons, user_protocol_split(user_ids, seed=config.seed, **split.model_dump())


def select(
    comparisons: Sequence[Comparison], split: Split, rows: np.ndarray, users: Sequence[str]
) -> list[Comparison]:
    """The comparisons among `rows` (e.g. `split.train`) that belong to `users`."""
    user_ids = np.array([c.user_id for c in comparisons], dtype=object)
    return [comparisons[i] for i in split.rows_of(rows, users, user_ids)]


def accepted_index(judged: Judged) -> int | None:
    """The first sample that is a consistent chain preferring the chosen response."""
    for i, result in enumerate(judged.results):
        if isinstance(result, EvaluationChain) and agrees(result) and not result.totals_disagree():
            return i
    return None


def chain_row(judged: Judged, budget: PromptBudget, provenance: dict[str, Any]) -> dict:
    task = judged.task
    row: dict[str, Any] = {
        "id": task.id,
        "user_id": task.comparison.user_id,
        "prompt": budget.render(task.request()),
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


def read_chain_rows(path: Path) -> Iterator[dict]:
    if path.exists():
        with path.open(encoding="utf-8") as lines:
            for line in lines:
                if line.strip():
                    yield json.loads(line)


def done_ids(path: Path) -> set[str]:
    return {row["id"] for row in read_chain_rows(path)}


def sft_rows(path: Path) -> list[dict]:
    return [row for row in read_chain_rows(path) if "completion" in row]
