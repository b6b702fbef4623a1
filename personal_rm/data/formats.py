"""Loaders for public personalization datasets, each turned into `Comparison`s.

Users bring these files as published; converting them here (instead of asking for the
normalized schema) keeps each annotator's identity and the dataset's own split labels.
Every loader reports a malformed row the way `parse_comparison` does: file, line, field.

Conversations become one prompt string through `conversation_text`: a single message is its
text as is (so single-turn prompts look like every other prompt), several become
`role: content` blocks separated by blank lines, with PRISM's role "model" written
"assistant" so that PRISM and PersonalRewardBench (built from PRISM) render alike.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from personal_rm.data.comparison import Comparison, DataError, RowError
from personal_rm.data.io import (
    LoadResult,
    OnError,
    collect,
    load_comparisons,
    read_numbered_rows,
)

ROLE_NAMES = {"model": "assistant"}
# PRISM's release writes this in place of an empty text; such a reply is no real choice.
PRISM_EMPTY = "EMPTY STRING"
# Survey answers worth conditioning on; the rest (consent, timings, study ids) are not.
PRISM_SURVEY_FIELDS = (
    "stated_prefs",
    "self_description",
    "system_string",
    "lm_familiarity",
    "age",
    "gender",
    "education",
    "employment_status",
    "marital_status",
    "english_proficiency",
    "religion",
    "ethnicity",
    "location",
)


_KIND_NAMES = {
    str: "a string",
    list: "a list",
    dict: "an object",
    int: "an integer",
    float: "a number",
    bool: "a boolean",
}


@dataclass(frozen=True)
class _At:
    """Where a row is, so every check can name file, line and field in its error."""

    source: str
    line: int

    def error(self, field: str | None, reason: str) -> DataError:
        return DataError(RowError(self.source, self.line, field, reason))

    def get(self, obj: dict[str, Any], key: str, kinds: tuple[type, ...], field: str) -> Any:
        value = obj.get(key)
        if value is None:
            raise self.error(field, "missing")
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
            expected = " or ".join(_KIND_NAMES[kind] for kind in kinds)
            raise self.error(field, f"expected {expected}, got {type(value).__name__}")
        return value

    def text(self, obj: dict[str, Any], key: str, field: str) -> str:
        value = self.get(obj, key, (str,), field)
        if not value.strip():
            raise self.error(field, "empty text")
        return value

    def mapping(self, value: Any, field: str | None) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.error(field, f"expected an object, got {type(value).__name__}")
        return value


def conversation_text(messages: list[dict[str, str]]) -> str:
    """One message: its content. Several: `role: content` blocks, blank-line separated."""
    if len(messages) == 1:
        return messages[0]["content"]
    return "\n\n".join(f"{ROLE_NAMES.get(m['role'], m['role'])}: {m['content']}" for m in messages)


def _load(
    paths: Iterable[Path],
    parse: Callable[[dict[str, Any], _At], list[Comparison]],
    on_error: OnError,
    errors: Iterable[DataError] = (),
) -> LoadResult:
    def parse_all() -> Iterator[Comparison | DataError]:
        yield from errors
        for path in paths:
            for number, row in read_numbered_rows(path):
                if isinstance(row, DataError):
                    yield row
                    continue
                at = _At(str(path), number)
                try:
                    yield from parse(at.mapping(row, None), at)
                except DataError as exc:
                    yield exc

    return collect(parse_all(), on_error=on_error)


# --- PersonalRewardBench -------------------------------------------------------------------


def _turns(at: _At, value: Any, field: str) -> str:
    """A string as is; a message `{role, content}` or a list of them, rendered."""
    if value is None:
        raise at.error(field, "missing")
    if isinstance(value, str):
        if not value.strip():
            raise at.error(field, "empty text")
        return value
    if isinstance(value, dict):
        return at.text(value, "content", f"{field}.content")
    if not isinstance(value, list):
        raise at.error(field, f"expected a string, message or list, got {type(value).__name__}")
    if not value:
        raise at.error(field, "empty conversation")
    messages = []
    for i, item in enumerate(value):
        message = at.mapping(item, f"{field}[{i}]")
        messages.append(
            {
                "role": at.text(message, "role", f"{field}[{i}].role"),
                "content": at.text(message, "content", f"{field}[{i}].content"),
            }
        )
    return conversation_text(messages)


def _personal_reward_bench_row(row: dict[str, Any], at: _At) -> list[Comparison]:
    user_id = at.text(row, "user_id", "user_id")
    split = at.text(row, "split", "split")
    prompt = _turns(at, row.get("context"), "context")
    chosen = _turns(at, row.get("chosen"), "chosen")
    rejected = _turns(at, row.get("rejected"), "rejected")
    if chosen == rejected:
        raise at.error(
            "rejected", "identical to 'chosen': a comparison needs two different responses"
        )
    meta: dict[str, Any] = {"split": split}
    if row.get("conversation_id") is not None:
        meta["conversation_id"] = row["conversation_id"]
    return [Comparison(user_id, prompt, chosen, rejected, meta)]


def load_personal_reward_bench(
    path: str | os.PathLike[str], on_error: OnError = "raise"
) -> LoadResult:
    """PersonalRewardBench rows `{user_id, split, context, chosen, rejected}` (JSONL/Parquet).

    Built for SynthesizeMe's release, where `context` is a list of `{role, content}` and
    `chosen`/`rejected` are single `{role, content}` messages; plain strings work too.
    `meta["split"]` keeps the dataset's own per-user train/val/test assignment.
    """
    return _load([Path(path)], _personal_reward_bench_row, on_error)


# --- PRISM ---------------------------------------------------------------------------------


def _prism_conversation(
    row: dict[str, Any], at: _At, surveys: dict[str, dict[str, Any]]
) -> list[Comparison]:
    user_id = at.text(row, "user_id", "user_id")
    conversation_id = at.text(row, "conversation_id", "conversation_id")
    history = at.get(row, "conversation_history", (list,), "conversation_history")
    user_text: dict[int, str] = {}
    replies: dict[int, list[dict[str, Any]]] = {}
    for i, item in enumerate(history):
        field = f"conversation_history[{i}]"
        entry = at.mapping(item, field)
        turn = at.get(entry, "turn", (int,), f"{field}.turn")
        role = at.text(entry, "role", f"{field}.role")
        content = at.text(entry, "content", f"{field}.content")
        if role == "user":
            if turn in user_text:
                raise at.error(f"{field}.turn", f"a second user message for turn {turn}")
            user_text[turn] = content
        elif role == "model":
            replies.setdefault(turn, []).append(
                {
                    "content": content,
                    "score": at.get(entry, "score", (int, float), f"{field}.score"),
                    "chosen": at.get(entry, "if_chosen", (bool,), f"{field}.if_chosen"),
                    "model": entry.get("model_name"),
                }
            )
        else:
            raise at.error(f"{field}.role", f"expected 'user' or 'model', got {role!r}")

    meta = {"conversation_id": conversation_id, "conversation_type": row.get("conversation_type")}
    if user_id in surveys:
        meta["survey"] = surveys[user_id]
    comparisons = []
    context: list[dict[str, str]] = []
    for turn in sorted(user_text.keys() | replies.keys()):
        if turn not in user_text:
            raise at.error("conversation_history", f"turn {turn} has replies but no user message")
        context.append({"role": "user", "content": user_text[turn]})
        if turn not in replies:
            continue
        chosen = [reply for reply in replies[turn] if reply["chosen"]]
        if not chosen:
            raise at.error("conversation_history", f"turn {turn} has no reply with if_chosen true")
        best = chosen[0]
        if PRISM_EMPTY not in (user_text[turn], best["content"]):
            prompt = conversation_text(context)
            for other in replies[turn]:
                if (
                    not other["chosen"]
                    and other["score"] < best["score"]
                    and other["content"] not in (best["content"], PRISM_EMPTY)
                ):
                    pair_meta = {
                        **meta,
                        "turn": turn,
                        "chosen_model": best["model"],
                        "rejected_model": other["model"],
                        "chosen_score": best["score"],
                        "rejected_score": other["score"],
                    }
                    comparisons.append(
                        Comparison(user_id, prompt, best["content"], other["content"], pair_meta)
                    )
        context.append({"role": "assistant", "content": best["content"]})
    return comparisons


def _prism_surveys(path: Path) -> tuple[dict[str, dict[str, Any]], list[DataError]]:
    surveys: dict[str, dict[str, Any]] = {}
    errors = []
    for number, row in read_numbered_rows(path):
        if isinstance(row, DataError):
            errors.append(row)
            continue
        try:
            at = _At(str(path), number)
            answers = at.mapping(row, None)
            user_id = at.text(answers, "user_id", "user_id")
            surveys[user_id] = {k: answers[k] for k in PRISM_SURVEY_FIELDS if k in answers}
        except DataError as exc:
            errors.append(exc)
    return surveys, errors


def load_prism(
    conversations_path: str | os.PathLike[str],
    survey_path: str | os.PathLike[str] | None = None,
    on_error: OnError = "raise",
) -> LoadResult:
    """PRISM `conversations.jsonl`: per turn, the chosen reply over each lower-scored one.

    The prompt is the conversation so far (earlier user turns and their chosen replies,
    then this turn's user message). Replies that tie the chosen score, repeat its text or
    are PRISM's "EMPTY STRING" placeholder make no pair. With `survey_path`
    (`survey.jsonl`), `meta["survey"]` holds the user's `PRISM_SURVEY_FIELDS` answers.
    """
    surveys, errors = _prism_surveys(Path(survey_path)) if survey_path else ({}, [])
    return _load(
        [Path(conversations_path)],
        lambda row, at: _prism_conversation(row, at, surveys),
        on_error,
        errors,
    )


# --- summarize-from-feedback ---------------------------------------------------------------


def _summarize_row(row: dict[str, Any], at: _At) -> list[Comparison]:
    worker = at.text(row, "worker", "worker")
    info = at.get(row, "info", (dict,), "info")
    if info.get("post") is not None:
        prompt = (
            f"SUBREDDIT: r/{at.text(info, 'subreddit', 'info.subreddit')}\n\n"
            f"TITLE: {at.text(info, 'title', 'info.title')}\n\n"
            f"POST: {at.text(info, 'post', 'info.post')}\n\nTL;DR:"
        )
    elif info.get("article") is not None:
        prompt = f"Article:\n\n{at.text(info, 'article', 'info.article')}\n\nTL;DR:"
    else:
        raise at.error("info.post", "missing (and no 'article' either)")
    summaries = at.get(row, "summaries", (list,), "summaries")
    if len(summaries) != 2:
        raise at.error("summaries", f"expected 2 summaries, got {len(summaries)}")
    texts = [
        at.text(at.mapping(s, f"summaries[{i}]"), "text", f"summaries[{i}].text")
        for i, s in enumerate(summaries)
    ]
    choice = at.get(row, "choice", (int,), "choice")
    if choice not in (0, 1):
        raise at.error("choice", f"expected 0 or 1, got {choice}")
    if texts[0] == texts[1]:
        raise at.error("summaries", "both summaries have the same text")
    extra = row.get("extra")
    meta = {
        "split": at.text(row, "split", "split"),
        "batch": row.get("batch"),
        "info_id": info.get("id"),
        "chosen_policy": summaries[choice].get("policy"),
        "rejected_policy": summaries[1 - choice].get("policy"),
        "confidence": extra.get("confidence") if isinstance(extra, dict) else None,
    }
    return [Comparison(worker, prompt, texts[choice], texts[1 - choice], meta)]


def load_summarize_feedback(
    path: str | os.PathLike[str], on_error: OnError = "raise"
) -> LoadResult:
    """OpenAI summarize-from-feedback `comparisons/*.json` (JSON lines), or that folder.

    The prompt is the paper's query format (`SUBREDDIT/TITLE/POST ... TL;DR:` for TL;DR,
    `Article: ... TL;DR:` for CNN/DM); the annotator (`worker`) is the user.
    """
    path = Path(path)
    return _load(sorted(path.glob("*.json")) if path.is_dir() else [path], _summarize_row, on_error)


# --- registry ------------------------------------------------------------------------------

FORMATS: dict[str, Callable[..., LoadResult]] = {
    "normalized": load_comparisons,
    "personal_reward_bench": load_personal_reward_bench,
    "prism": load_prism,
    "summarize_feedback": load_summarize_feedback,
}


def load_any(
    path: str | os.PathLike[str],
    format: str = "normalized",
    *,
    on_error: OnError = "raise",
    **options: Any,
) -> LoadResult:
    """Load `path` with the loader named `format`; `options` go to it (e.g. `survey_path`)."""
    if format not in FORMATS:
        raise ValueError(f"unknown format {format!r} (known: {', '.join(sorted(FORMATS))})")
    return FORMATS[format](path, on_error=on_error, **options)
