"""The wire format of the scoring service: pydantic models whose limits are the API's limits.

Every client mistake is caught here and answered with a 422 that names the field, before any
replica does work. Ids are restricted to a safe alphabet: they end up in URLs, log lines and
multiplexed model ids, and nothing a client sends may be read as a path or code.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    computed_field,
    model_validator,
)

from personal_rm.data.comparison import Comparison

USER_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:@-]{0,127}$"
UserId = Annotated[str, StringConstraints(pattern=USER_ID_PATTERN)]
# An API key's public half: it names the key in provenance and admin URLs, never authenticates.
KEY_ID_PATTERN = r"^[0-9a-f]{12}$"


class Limits(BaseModel):
    """Per-request bounds; generous for real use, small enough that no request starves others."""

    model_config = ConfigDict(extra="forbid")

    max_responses: int = 16
    max_chars: int = 8000
    max_history: int = 64
    max_n: int = 32
    max_m: int = 32
    max_batch: int = 64


LIMITS = Limits()
Prompt = Annotated[str, StringConstraints(min_length=1, max_length=LIMITS.max_chars)]
ResponseText = Annotated[str, StringConstraints(max_length=LIMITS.max_chars)]


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=False)


class HistoryItem(StrictModel):
    prompt: Prompt
    chosen: ResponseText
    rejected: ResponseText

    @model_validator(mode="after")
    def _different(self) -> HistoryItem:
        if self.chosen == self.rejected:
            raise ValueError("chosen and rejected must differ")
        return self

    def comparison(self, user_id: str, source: str = "request") -> Comparison:
        return Comparison(user_id, self.prompt, self.chosen, self.rejected, {"source": source})


class ScoreRequest(StrictModel):
    user_id: UserId
    prompt: Prompt
    responses: list[ResponseText] = Field(min_length=2, max_length=LIMITS.max_responses)
    history: list[HistoryItem] = Field(default_factory=list, max_length=LIMITS.max_history)
    method: Literal["mrm_shrunk", "mrm", "rubric", "genrm"] = Field(
        "mrm_shrunk",
        description="`mrm_shrunk` (default): MRM shrunk toward the global reward, plus the "
        "user's own correction, each by as much as validation users earn; `mrm`, `rubric`: "
        "the judges unshrunk; `genrm`: the LLM judge.",
    )
    n: int | None = Field(
        None, ge=1, le=LIMITS.max_n, description="Individual-level samples (default: the state's)."
    )
    m: int | None = Field(
        None, ge=0, le=LIMITS.max_m, description="Prototype neighbours (default: the state's)."
    )
    return_chains: bool = False


class BatchScoreRequest(StrictModel):
    """Many prompts in one call, the shape RL trainers' reward clients send."""

    requests: list[ScoreRequest] = Field(min_length=1, max_length=LIMITS.max_batch)


HISTORY_USED = Field(
    description="Comparisons scoring reads for this user: the newest stored ones (plus any sent "
    "with the request), at most `history_limit`."
)
HISTORY_LIMIT = Field(
    LIMITS.max_history, description="The cap on `history_used`; older rows are kept, not read."
)
HISTORY_ROWS = Field(description="Comparisons stored for this user, all of them (no cap).")


class HistoryCounts(BaseModel):
    """How much of a user's history there is and how much of it counts: two numbers that a
    single `history_size` used to mean in turn (64 in one answer, 200 in the next)."""

    history_used: int = HISTORY_USED
    history_limit: int = HISTORY_LIMIT

    @computed_field(deprecated="read history_used (or history_rows)")
    @property
    def history_size(self) -> int:
        """Deprecated alias of `history_used`, kept for clients written before the split."""
        return self.history_used


class ScoreResponse(HistoryCounts):
    user_id: str
    scores: list[float]
    preferred: int
    prototype: int | None
    method: str
    parts: dict[str, int] = Field(description="Valid samples per level, e.g. individual/prototype.")
    alpha: float = Field(description="Weight the individual level got in the mix.")
    chains: list[dict | None] | None = Field(
        None, description="With return_chains: every sample's chain, null where it did not parse."
    )
    timing_ms: dict[str, float]


class BatchScoreResponse(BaseModel):
    results: list[ScoreResponse]


class FeedbackRequest(HistoryItem):
    """One comparison the user made: a `HistoryItem` that names its user."""

    user_id: UserId
    request_id: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$",
        description="The client's id for this feedback (a UUID, say): a POST retried with the "
        "same user_id and request_id is stored once and answered with the first row's id; "
        "the same id with a different comparison is a 409.",
    )


class FeedbackResponse(HistoryCounts):
    id: int
    user_id: str
    history_rows: int = HISTORY_ROWS


class UserInfo(HistoryCounts):
    user_id: str
    history_rows: int = HISTORY_ROWS
    prototype: int | None
    weights: list[float] | None = Field(description="MRM mixture weights over the base rewards.")


class StoredFeedback(BaseModel):
    """One stored comparison, as an admin reviewing a key's writes sees it."""

    id: int
    user_id: str
    prompt: str
    chosen: str
    rejected: str
    created_at: str


class KeyFeedback(BaseModel):
    key_id: str
    rows: list[StoredFeedback] = Field(description="Oldest first, ids >= from_id.")
    next_from_id: int | None = Field(description="Pass as from_id for the next page; None: done.")


class KeyFeedbackDeleted(BaseModel):
    key_id: str
    deleted: int
    users: dict[str, int] = Field(description="Rows deleted per user; their next score omits them.")
