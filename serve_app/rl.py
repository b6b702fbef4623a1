"""Rewards for RL trainers: OpenRLHF's remote reward-model request, pointwise and group scoring.

    POST /get_reward?method=mrm   {"query": [...], "prompts": [...], "labels": [...]}
    -> {"rewards": [...]}

OpenRLHF posts `query` = prompt + response (the decoded rollout), `prompts` = the prompt it
generated from and `labels` = its `--data.label_key` column, its one per-sample field: here
the user id, one per query. The response is the query after its prompt; without `prompts` the
whole query is the response (OpenRLHF's own reward functions fall back the same way).

Reward scales, per method:
- the feature judges, `mrm_shrunk`, `mrm`, `rubric` (pointwise): r_u(x, y) = w_u . b(x, y), the
  user's mixture of the judge's base rewards adapted on their stored history (a cold-start
  user: the meta-learned w0; for `mrm_shrunk` one more base, the user's own correction
  fitted on that history), the reward the evaluation harness scores under those names.
  Bradley-Terry logits: r(a) - r(b) is the log-odds that the user prefers a (for `mrm_shrunk`
  times the positive factor that makes its chain weights sum to one); the offset means nothing.
  A row's reward does not depend on the other rows. No test-time scaling: it mixes chains,
  whose 1-10 scores rank the responses of one request against each other.
- `genrm` (listwise): the completions of one prompt for one user are judged together in one
  test-time scaled chain (`/v1/score`'s path), in chunks of at most len(LABELS) = 8; each gets
  its weighted criterion score on 1-10. Scores compare within a chunk only.
`normalize=user` standardises each user's rewards within the request (mean 0, std 1), since
users' rewards differ in scale; it makes a reward depend on the batch it came in.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Literal

import numpy as np
from fastapi import HTTPException
from pydantic import BaseModel, Field, StringConstraints, model_validator

from personal_rm.data.comparison import Comparison
from personal_rm.embed import pair_text
from personal_rm.pgenrm.prompt import LABELS
from personal_rm.serving.state import Frontend
from serve_app.api import LIMITS, Prompt, ScoreRequest, StrictModel, UserId
from serve_app.shard import split_evenly

Query = Annotated[str, StringConstraints(max_length=2 * LIMITS.max_chars)]
Method = ScoreRequest.model_fields["method"].annotation  # one list of methods, /v1/score's


class RewardOptions(StrictModel):
    """URL query parameters, so that a trainer that posts only OpenRLHF's three fields can set
    them: `--reward.remote_url 'http://host:8000/get_reward?method=rubric&normalize=user'`."""

    method: Method = ScoreRequest.model_fields["method"].default
    normalize: Literal["none", "user"] = Field(
        "none", description="user: each user's rewards in this request to mean 0, std 1."
    )
    n: int | None = Field(None, ge=1, le=LIMITS.max_n, description="genrm: individual chains.")
    m: int | None = Field(None, ge=0, le=LIMITS.max_m, description="genrm: prototype chains.")


class RewardRequest(StrictModel):
    query: list[Query] = Field(
        min_length=1, max_length=LIMITS.max_batch, description="Prompt + response text."
    )
    prompts: list[Prompt] | None = Field(
        None, description="The prompt each query starts with; it is cut off to get the response."
    )
    labels: list[UserId] = Field(description="The user id of each query.")

    @model_validator(mode="after")
    def _aligned(self) -> RewardRequest:
        for name in ("prompts", "labels"):
            given = getattr(self, name)
            if given is not None and len(given) != len(self.query):
                raise ValueError(f"{name}: {len(given)} items for {len(self.query)} queries")
        for i, (prompt, response) in enumerate(self.split()):
            if prompt and not self.query[i].startswith(prompt):
                raise ValueError(f"query[{i}] does not start with prompts[{i}]")
            if len(response) > LIMITS.max_chars:
                raise ValueError(f"query[{i}]: response longer than {LIMITS.max_chars} chars")
        return self

    def split(self) -> list[tuple[str, str]]:
        """(prompt, response) of each query."""
        prompts = self.prompts or [""] * len(self.query)
        return [(p, q[len(p) :]) for p, q in zip(prompts, self.query, strict=True)]


class RewardResponse(BaseModel):
    rewards: list[float]


@dataclass
class RewardLedger:
    """What /get_reward returned, per ingress replica since it started (a restart resets it): a
    trainer can check that every reward it consumed came from this server (counts and a sum,
    nothing about users)."""

    requests: int = 0
    rewards: int = 0
    reward_sum: float = 0.0

    def record(self, rewards: Sequence[float]) -> None:
        self.requests += 1
        self.rewards += len(rewards)
        self.reward_sum += float(sum(rewards))


def pointwise_rewards(
    frontend: Frontend, method: str, users: Sequence[str], pairs: Sequence[tuple[str, str]]
) -> np.ndarray:
    """r_u(prompt, response) of each row: each user adapted once on their stored history, every
    text embedded in one (cached) encoder call."""
    judge = frontend.router.judges[method]
    distinct = list(dict.fromkeys(users))
    history: list[Comparison] = [c for u in distinct for c in frontend.comparisons(u)]
    features = frontend.encoder.encode([pair_text(p, r) for p, r in pairs])
    rewards = judge.personalize(frontend.embed(history), distinct)
    thetas = np.stack([rewards[u].theta for u in users])
    return np.einsum("id,id->i", features.astype(np.float64), thetas)


def group_requests(
    users: Sequence[str], pairs: Sequence[tuple[str, str]], options: RewardOptions
) -> list[tuple[list[int], ScoreRequest]]:
    """genrm's listwise plan: the rows of each (user, prompt), in chunks of at most len(LABELS)
    responses split evenly (9 -> 5 + 4, never a lone response), each one `/v1/score` request."""
    if any(not prompt for prompt, _ in pairs):
        raise HTTPException(400, "prompts: method 'genrm' groups completions by prompt; send them")
    groups: dict[tuple[str, str], list[int]] = {}
    for i, (user, (prompt, _)) in enumerate(zip(users, pairs, strict=True)):
        groups.setdefault((user, prompt), []).append(i)
    plan = []
    for (user, prompt), rows in groups.items():
        if len(rows) < 2:
            raise HTTPException(
                400,
                f"labels[{rows[0]}]: method 'genrm' ranks a group, and this user has one "
                "completion of this prompt; send two or more (GRPO's num_generations)",
            )
        start = 0
        for size in split_evenly(len(rows), math.ceil(len(rows) / len(LABELS))):
            chunk = rows[start : start + size]
            start += size
            responses = [pairs[i][1] for i in chunk]
            request = ScoreRequest(
                user_id=user,
                prompt=prompt,
                responses=responses,
                method="genrm",
                n=options.n,
                m=options.m,
            )
            plan.append((chunk, request))
    return plan


def normalize_per_user(rewards: np.ndarray, users: Sequence[str]) -> np.ndarray:
    """Each user's rewards to mean 0 and std 1 (a user with one row, or equal rewards: 0)."""
    out = np.zeros_like(rewards)
    labels = np.asarray(users, dtype=object)
    for user in dict.fromkeys(users):
        rows = labels == user
        centred = rewards[rows] - rewards[rows].mean()
        std = centred.std()
        out[rows] = centred / std if std > 1e-12 else 0.0
    return out
