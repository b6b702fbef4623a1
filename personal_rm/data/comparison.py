"""The one record every part of the system speaks: a user's pairwise preference.

The field names follow TRL's `prompt / chosen / rejected` rows plus `user_id`, so data that
users already have needs no conversion beyond naming the annotator.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

REQUIRED_TEXT_FIELDS = ("user_id", "prompt", "chosen", "rejected")
# An empty *response* is real data (LLMFAO has 531 comparisons against a model that answered
# nothing); an empty user id or prompt is not.
NON_EMPTY_FIELDS = ("user_id", "prompt")


@dataclass(frozen=True)
class Comparison:
    """`user_id` preferred `chosen` over `rejected` as an answer to `prompt`."""

    user_id: str
    prompt: str
    chosen: str
    rejected: str
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def to_row(self) -> dict[str, Any]:
        return {
            "user_id": self.user_id,
            "prompt": self.prompt,
            "chosen": self.chosen,
            "rejected": self.rejected,
            "meta": self.meta,
        }


def by_user(comparisons: Sequence[Comparison]) -> dict[str, list[Comparison]]:
    """Each user's comparisons, in the given order."""
    out: dict[str, list[Comparison]] = {}
    for c in comparisons:
        out.setdefault(c.user_id, []).append(c)
    return out


@dataclass(frozen=True)
class RowError:
    """Where a malformed row is and what is wrong with it, precise enough to fix by hand."""

    source: str
    line: int
    field: str | None
    reason: str

    def __str__(self) -> str:
        where = f"{self.source}:{self.line}"
        return (
            f"{where}: field {self.field!r}: {self.reason}"
            if self.field
            else f"{where}: {self.reason}"
        )


class DataError(ValueError):
    """A malformed input row; `str()` names the file, the line and the field."""

    def __init__(self, error: RowError):
        super().__init__(str(error))
        self.error = error


def parse_comparison(row: Any, *, source: str, line: int) -> Comparison:
    """Validate one decoded row of the normalized schema; raise `DataError` naming the field."""

    def fail(field_name: str | None, reason: str) -> DataError:
        return DataError(RowError(source, line, field_name, reason))

    if not isinstance(row, dict):
        raise fail(None, f"expected a JSON object, got {type(row).__name__}")
    for name in REQUIRED_TEXT_FIELDS:
        if name not in row or row[name] is None:
            raise fail(name, "missing")
        value = row[name]
        if not isinstance(value, str):
            raise fail(name, f"expected a string, got {type(value).__name__}")
        if name in NON_EMPTY_FIELDS and not value.strip():
            raise fail(name, "empty text")
    if row["chosen"] == row["rejected"]:
        raise fail("rejected", "identical to 'chosen': a comparison needs two different responses")
    meta = row.get("meta") or {}
    if not isinstance(meta, dict):
        raise fail("meta", f"expected an object, got {type(meta).__name__}")
    return Comparison(row["user_id"], row["prompt"], row["chosen"], row["rejected"], meta)
