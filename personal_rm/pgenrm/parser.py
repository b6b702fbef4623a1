"""Read a judge's generation into an `EvaluationChain`, or a typed `ParseFailure`; never raise.

A served judge meets garbled, truncated and creative output every day; each way a generation
can fail is a `FailureKind`, so failure rates are counted by cause instead of crashing a
server or being silently dropped from a metric. Weights that sum to 1 up to rounding
(0.33 + 0.33 + 0.33) are renormalised; further off, the rubric is inconsistent. Final scores
are always recomputed from weights * scores (`EvaluationChain.final_scores`); stated totals
are kept so `totals_disagree()` can flag a judge that cannot add.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from enum import Enum
from typing import Any

from pydantic import ValidationError

from personal_rm.pgenrm.chain import Criterion, EvaluationChain, Persona, ResponseScore
from personal_rm.pgenrm.prompt import CHAIN_END, CHAIN_START, LABELS, TOTAL_KEY

WEIGHT_ROUNDING = 0.02  # |Σ weights - 1| up to this is rounding, renormalised; more is a failure


class FailureKind(str, Enum):
    NO_MARKERS = "no_markers"  # no complete <chain> ... </chain> block (e.g. truncated)
    BAD_JSON = "bad_json"  # the block is not one JSON object
    MISSING_RESPONSE = "missing_response"  # a response has no scores
    NON_NUMERIC_SCORE = "non_numeric_score"  # a score or total is not a finite number
    WEIGHTS_INCONSISTENT = "weights_inconsistent"  # weights missing, non-numeric or not Σ=1
    INVALID = "invalid"  # any other schema violation (persona, criteria, range, verdict)


@dataclass(frozen=True)
class ParseFailure:
    kind: FailureKind
    detail: str


ParseResult = EvaluationChain | ParseFailure


class _Fail(Exception):
    def __init__(self, kind: FailureKind, detail: str):
        self.failure = ParseFailure(kind, detail[:200])


def _block(text: str) -> str:
    """The last complete marker block: a model may quote the format in its analysis first."""
    end = text.rfind(CHAIN_END)
    start = text.rfind(CHAIN_START, 0, end) if end >= 0 else -1
    if start < 0:
        raise _Fail(FailureKind.NO_MARKERS, "no complete chain block")
    body = text[start + len(CHAIN_START) : end].strip()
    if body.startswith("```"):  # a fenced block inside the markers
        body = body.strip("`").removeprefix("json").strip()
    return body


def _finite(value: Any, kind: FailureKind, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _Fail(kind, f"{what} is not a number: {value!r}")
    try:
        number = float(value)
    except OverflowError:
        number = math.inf
    if not math.isfinite(number):
        raise _Fail(kind, f"{what} is not finite")
    return number


def _get(obj: dict, key: str, kind: type) -> Any:
    value = obj.get(key)
    if not isinstance(value, kind):
        raise _Fail(FailureKind.INVALID, f"{key!r} missing or not a {kind.__name__}")
    return value


def _persona(data: dict) -> Persona:
    persona = _get(data, "persona", dict)
    fields = {name: persona.get(name) for name in Persona.model_fields}
    if not all(isinstance(v, str) for v in fields.values()):
        raise _Fail(FailureKind.INVALID, f"persona needs {sorted(fields)} as strings")
    return Persona(**fields)


def _rubric(data: dict) -> list[Criterion]:
    rubric = data.get("rubric")
    if not isinstance(rubric, list) or not rubric:
        raise _Fail(FailureKind.INVALID, "'rubric' missing or not a non-empty list")
    names, weights, descriptions = [], [], []
    for item in rubric:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise _Fail(FailureKind.INVALID, f"criterion without a name: {item!r}")
        names.append(item["name"])
        weights.append(_finite(item.get("weight"), FailureKind.WEIGHTS_INCONSISTENT, "a weight"))
        descriptions.append(item.get("description", ""))
    if len(set(names)) != len(names) or TOTAL_KEY in names or "" in names:
        raise _Fail(FailureKind.INVALID, f"criterion names must be distinct and real: {names}")
    total = sum(weights)
    if min(weights) < 0 or abs(total - 1.0) > WEIGHT_ROUNDING:
        raise _Fail(FailureKind.WEIGHTS_INCONSISTENT, f"weights {weights} sum to {total:.3f}")
    return [
        Criterion(name=n, description=d if isinstance(d, str) else str(d), weight=w / total)
        for n, d, w in zip(names, descriptions, weights, strict=True)
    ]


def _scores(data: dict, names: set[str], n_responses: int) -> list[ResponseScore]:
    scores = _get(data, "scores", dict)
    labels = LABELS[:n_responses]
    if extra := set(scores) - set(labels):
        raise _Fail(FailureKind.INVALID, f"scores for unknown responses {sorted(extra)}")
    result = []
    for index, label in enumerate(labels):
        entry = scores.get(label)
        if not isinstance(entry, dict):
            raise _Fail(FailureKind.MISSING_RESPONSE, f"no scores for response {label}")
        total = entry.get(TOTAL_KEY)
        values = {k: v for k, v in entry.items() if k != TOTAL_KEY}
        if set(values) != names:
            raise _Fail(FailureKind.INVALID, f"{label} scored on {sorted(values)}, not the rubric")
        numbers = {
            k: _finite(v, FailureKind.NON_NUMERIC_SCORE, f"{label}.{k}") for k, v in values.items()
        }
        if not all(1.0 <= v <= 10.0 for v in numbers.values()):
            raise _Fail(FailureKind.INVALID, f"{label}: scores outside [1, 10]")
        stated = None
        if total is not None:
            stated = _finite(total, FailureKind.NON_NUMERIC_SCORE, f"{label}.{TOTAL_KEY}")
        result.append(ResponseScore(response=index, scores=numbers, stated_total=stated))
    return result


def parse_chain(text: str, n_responses: int = 2) -> ParseResult:
    """The chain in `text` (indices in the order the judge saw), or why there is none."""
    try:
        try:
            data = json.loads(_block(text))
        except (ValueError, RecursionError) as exc:
            raise _Fail(FailureKind.BAD_JSON, str(exc)) from None
        if not isinstance(data, dict):
            raise _Fail(FailureKind.BAD_JSON, f"expected an object, got {type(data).__name__}")
        persona = _persona(data)
        rubric = _rubric(data)
        scores = _scores(data, {c.name for c in rubric}, n_responses)
        verdict = data.get("verdict")
        labels = list(LABELS[:n_responses])
        if not isinstance(verdict, str) or verdict.strip() not in labels:
            raise _Fail(FailureKind.INVALID, f"verdict {verdict!r} names no response")
        analysis = text[: text.rfind(CHAIN_START, 0, text.rfind(CHAIN_END))].strip()
        return EvaluationChain(
            analysis=analysis,
            persona=persona,
            rubric=rubric,
            scores=scores,
            verdict=labels.index(verdict.strip()),
        )
    except _Fail as fail:
        return fail.failure
    except ValidationError as exc:  # a rule of the schema that the checks above do not repeat
        return ParseFailure(FailureKind.INVALID, str(exc)[:200])
