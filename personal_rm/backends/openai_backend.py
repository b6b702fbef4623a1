"""Any OpenAI-compatible `/v1/chat/completions` server (vLLM's, ours, a hosted one).

One request per prompt asks for its n samples (`"n": n`; vLLM prefills once). Requests run
`concurrency` at a time; each has a timeout and is retried `max_retries` times with
exponential backoff on connection errors, timeouts, 429 and 5xx. A request that still fails
raises: a dead server should stop a job, not turn into a column of parse failures.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import httpx

from personal_rm.backends import SamplingConfig, distinct_samples
from personal_rm.pgenrm.prompt import Message

RETRY_STATUS = {408, 429, 500, 502, 503, 504}


class OpenAIBackend:
    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key: str | None = None,
        timeout_s: float = 120.0,
        max_retries: int = 3,
        concurrency: int = 8,
        backoff_s: float = 0.5,
    ):
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.client = httpx.Client(
            base_url=base_url.rstrip("/"),
            headers=headers,
            timeout=timeout_s,
            limits=httpx.Limits(max_connections=concurrency),
        )
        self.model = model
        self.max_retries = max_retries
        self.concurrency = concurrency
        self.backoff_s = backoff_s

    def _complete(self, messages: Sequence[Message], n: int, sampling: SamplingConfig) -> list[str]:
        payload = {
            "model": self.model,
            "messages": list(messages),
            "n": distinct_samples(n, sampling),
            "max_tokens": sampling.max_new_tokens,
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
        }
        if sampling.seed is not None:
            payload["seed"] = sampling.seed
        for attempt in range(self.max_retries + 1):
            try:
                response = self.client.post("/chat/completions", json=payload)
                if response.status_code not in RETRY_STATUS:
                    response.raise_for_status()
                    choices = sorted(response.json()["choices"], key=lambda c: c["index"])
                    texts = [c["message"]["content"] or "" for c in choices]
                    return texts * (n // len(texts))
                error: Exception = httpx.HTTPStatusError(
                    f"status {response.status_code}", request=response.request, response=response
                )
            except httpx.TransportError as exc:  # connection refused, reset, timeout
                error = exc
            if attempt < self.max_retries:
                time.sleep(self.backoff_s * 2**attempt)
        raise RuntimeError(f"{self.max_retries + 1} attempts failed: {error!r}") from error

    def generate(
        self, prompts: Sequence[Sequence[Message]], n: int, sampling: SamplingConfig
    ) -> list[list[str]]:
        with ThreadPoolExecutor(self.concurrency) as pool:
            return list(pool.map(lambda p: self._complete(p, n, sampling), prompts))
