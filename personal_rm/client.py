"""Personalized rewards from the scoring service, as a reward function TRL's GRPOTrainer takes.

    from personal_rm.client import PersonalReward
    reward = PersonalReward("http://127.0.0.1:8000", method="mrm")
    GRPOTrainer(model=..., reward_funcs=[reward], train_dataset=rows_with_a_user_id_column)

TRL calls a reward function as `f(prompts=..., completions=..., completion_ids=..., **columns)`
(`GRPOTrainer._calculate_rewards`): every other dataset column arrives as a keyword, one value
per completion, so the user id comes from a `user_id` column. Prompts and completions are
strings, or lists of chat messages for a conversational dataset. Each call posts the rows to
`POST /get_reward` (OpenRLHF's shape, user ids in `labels`) in batches that keep a prompt's
completions together (genrm ranks them as one group); it retries what may pass on a retry
(timeouts, refused connections, 429, 5xx) a bounded number of times, and raises on the rest.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from itertools import groupby
from typing import Any

import httpx

Message = dict[str, Any]
RETRYABLE = {429, 500, 502, 503, 504}


class RewardServerError(RuntimeError):
    """The server refused the rows (a 4xx says which field) or stayed unreachable."""


def as_text(value: str | Sequence[Message]) -> str:
    """A string as is; chat messages as their text contents, a blank line apart. System
    messages are left out: they instruct the policy and are not what the user asked."""
    if isinstance(value, str):
        return value
    texts = []
    for message in value:
        if message.get("role") == "system":
            continue
        content = message.get("content") or ""
        if not isinstance(content, str):  # multimodal parts: [{"type": "text", "text": ...}]
            content = "".join(part.get("text", "") for part in content)
        texts.append(content)
    return "\n\n".join(texts)


def batches(keys: Sequence[tuple[str, str]], size: int) -> list[range]:
    """Consecutive row ranges of at most `size` rows that split no run of equal keys (a user's
    completions of one prompt), unless the run alone is longer than `size`."""
    out, start, end = [], 0, 0  # the open batch is rows start:end
    for _, run in groupby(keys):
        n = sum(1 for _ in run)
        if end + n - start > size and end > start:  # the run does not fit: close the batch
            out.append(range(start, end))
            start = end
        if n > size:  # a run longer than a batch: cut evenly, so no piece is a lone row
            parts = -(-n // size)
            for i in range(parts):
                out.append(range(start, start + n // parts + (i < n % parts)))
                start = out[-1].stop
        end += n
    if end > start:
        out.append(range(start, end))
    return out


class PersonalReward:
    """A TRL reward function: each completion's reward for the user of its row.

    `method` and `normalize` are the server's (`serve_app/rl.py`: the scale of each method's
    rewards); `api_key` is a key with the `score` scope bound to the users of the data."""

    def __init__(
        self,
        base_url: str,
        *,
        method: str | None = None,
        normalize: str = "none",
        user_column: str = "user_id",
        api_key: str | None = None,
        batch_size: int = 64,
        timeout_s: float = 60.0,
        attempts: int = 4,
        backoff_s: float = 0.5,
        name: str = "personal_reward",
    ) -> None:
        self.__name__ = name  # TRL logs rewards/<__name__>/mean
        self.user_column, self.batch_size = user_column, batch_size
        self.attempts, self.backoff_s = attempts, backoff_s
        self.params = {"normalize": normalize} | ({"method": method} if method else {})
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.http = httpx.Client(base_url=base_url, headers=headers, timeout=timeout_s)

    def __call__(
        self, prompts: Sequence[Any], completions: Sequence[Any], **columns: Any
    ) -> list[float]:
        if self.user_column not in columns:
            given = ", ".join(sorted(columns))
            raise KeyError(f"no {self.user_column!r} column among the reward kwargs ({given})")
        users = [str(u) for u in columns[self.user_column]]
        prompts_text = [as_text(p) for p in prompts]
        queries = [p + as_text(c) for p, c in zip(prompts_text, completions, strict=True)]
        rewards: list[float] = []
        for rows in batches(list(zip(users, prompts_text, strict=True)), self.batch_size):
            body = {
                "query": queries[rows.start : rows.stop],
                "prompts": prompts_text[rows.start : rows.stop],
                "labels": users[rows.start : rows.stop],
            }
            rewards += self.post(body)
        return rewards

    def post(self, body: dict[str, list[str]]) -> list[float]:
        """One batch, retried with exponential backoff (or the server's Retry-After)."""
        for attempt in range(self.attempts):
            wait = self.backoff_s * 2**attempt
            try:
                response = self.http.post("/get_reward", params=self.params, json=body)
            except httpx.TransportError as exc:  # refused, reset, timed out
                failure = f"{type(exc).__name__}: {exc}"
            else:
                if response.status_code not in RETRYABLE:
                    if response.is_error:
                        raise RewardServerError(f"{response.status_code}: {response.text}")
                    rewards = response.json()["rewards"]
                    if len(rewards) != len(body["query"]):
                        raise RewardServerError(f"{len(rewards)} rewards for {len(body['query'])}")
                    return rewards
                failure = f"{response.status_code}: {response.text}"
                wait = float(response.headers.get("retry-after", wait))
            if attempt + 1 < self.attempts:
                time.sleep(wait)
        raise RewardServerError(f"no rewards after {self.attempts} attempts; last: {failure}")

    def close(self) -> None:
        self.http.close()
