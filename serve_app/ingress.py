"""The HTTP ingress: validation, durable feedback, routing each request to its prototype shard.

Request path: read the user's stored history (plus any history sent with the request), embed
the texts (cached), place the user in a prototype from that history, and ask the shard of
that prototype to score. Feedback is committed to the store before
the response is sent, and every later score reads the history again, so the user is
re-adapted (weights, rubric, prototype) from their very next request.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

from fastapi import FastAPI, HTTPException, Request
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from ray import serve
from ray.serve.handle import DeploymentHandle

from personal_rm.embed import CachedEncoder, MiniLMEncoder
from personal_rm.pgenrm.prompt import LABELS
from personal_rm.serving.state import TEXT_JUDGES, Frontend, load_router
from personal_rm.serving.store import SQLiteFeedbackStore
from serve_app.api import (
    LIMITS,
    USER_ID_PATTERN,
    BatchScoreRequest,
    BatchScoreResponse,
    FeedbackRequest,
    FeedbackResponse,
    ScoreRequest,
    ScoreResponse,
    UserInfo,
)
from serve_app.config import ServeAppConfig

MAX_BODY_BYTES = 4 * 1024 * 1024

app = FastAPI(
    title="personal-rm",
    description="Personalized reward scoring: which response would *this* user prefer, and why.",
    version="0.1.0",
)


@app.exception_handler(RequestValidationError)
async def invalid_request(request: Request, exc: RequestValidationError) -> Response:
    """422 naming each bad field, without echoing the input back: FastAPI's default reflects
    it, and a lone surrogate or an Infinity in it cannot be encoded (a 500 for a 4xx)."""
    errors = [{"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]} for e in exc.errors()]
    body = json.dumps({"detail": errors}, ensure_ascii=True, default=str)
    return Response(body, status_code=422, media_type="application/json")


@app.middleware("http")
async def reject_oversized(request: Request, call_next):
    """413 before the body is read: no request may make a replica parse megabytes."""
    length = request.headers.get("content-length")
    if length is not None and (not length.isdigit() or int(length) > MAX_BODY_BYTES):
        return JSONResponse({"detail": f"body larger than {MAX_BODY_BYTES} bytes"}, 413)
    return await call_next(request)


@serve.deployment
@serve.ingress(app)
class Ingress:
    def __init__(self, shards: list[DeploymentHandle], config: ServeAppConfig):
        import torch

        torch.set_num_threads(1)
        self.config, self.shards = config, shards
        self.encoder = CachedEncoder(MiniLMEncoder(), config.cache_dir)
        self.router = load_router(config.state_dir, self.encoder)
        self.store = SQLiteFeedbackStore(config.store_path)
        self.frontend = Frontend(self.router, self.store, self.encoder, LIMITS.max_history)
        self.methods = sorted({*self.router.judges, *(["genrm"] if config.genrm else [])})

    async def _score(self, req: ScoreRequest) -> ScoreResponse:
        if req.method not in self.methods:
            enabled = ", ".join(self.methods)
            raise HTTPException(400, f"method {req.method!r} is not enabled here ({enabled})")
        if req.method in TEXT_JUDGES and len(req.responses) > len(LABELS):
            raise HTTPException(
                400, f"method {req.method!r} judges at most {len(LABELS)} responses"
            )
        started = time.perf_counter()
        extra = [h.comparison(req.user_id) for h in req.history]
        prep = await asyncio.to_thread(
            self.frontend.prepare, req.user_id, req.prompt, req.responses, extra
        )
        prepared = time.perf_counter()
        scaling = self.config.scaling.model_copy(update={"n": req.n, "m": req.m})
        history, request = prep.judge_inputs(req.method)
        result = await self.shard(prep.prototype).score.remote(
            prep.prototype, req.method, req.user_id, history, prep.vector, request, scaling
        )
        done = time.perf_counter()
        if result.scores is None:
            raise HTTPException(503, "no valid evaluation chain was produced; retry")
        chains = result.individual + result.prototype if req.return_chains else None
        return ScoreResponse(
            user_id=req.user_id,
            scores=[float(s) for s in result.scores],
            preferred=int(result.verdict),
            prototype=prep.prototype,
            method=req.method,
            history_size=len(prep.history),
            parts={
                "individual": sum(c is not None for c in result.individual),
                "prototype": sum(c is not None for c in result.prototype),
            },
            alpha=result.alpha,
            chains=[c.model_dump() if c else None for c in chains] if chains is not None else None,
            timing_ms={
                "prepare": 1000 * (prepared - started),
                "score": 1000 * (done - prepared),
                "total": 1000 * (done - started),
            },
        )

    def shard(self, prototype: int) -> DeploymentHandle:
        """The shard deployment serving `prototype`, tagged with it when multiplexed."""
        handle = self.shards[prototype % len(self.shards)]
        if self.config.shard_layout == "multiplexed":
            return handle.options(multiplexed_model_id=str(prototype))
        return handle

    @app.post("/v1/score", response_model=ScoreResponse)
    async def score(self, req: ScoreRequest) -> ScoreResponse:
        """Scores for each response, for this user: test-time scaled chains of the method."""
        return await self._score(req)

    @app.post("/v1/score/batch", response_model=BatchScoreResponse)
    async def score_batch(self, batch: BatchScoreRequest) -> BatchScoreResponse:
        """Many requests in one call, scored concurrently (what an RL trainer sends)."""
        return BatchScoreResponse(results=await asyncio.gather(*map(self._score, batch.requests)))

    @app.post("/v1/feedback", response_model=FeedbackResponse)
    async def feedback(self, req: FeedbackRequest) -> FeedbackResponse:
        """Stored durably (committed) before this returns; the next score uses it."""
        row = await asyncio.to_thread(self.store.add, req.comparison(req.user_id, "feedback"))
        size = await asyncio.to_thread(self.store.count, req.user_id)
        return FeedbackResponse(id=row, user_id=req.user_id, history_size=size)

    @app.get("/v1/users/{user_id}", response_model=UserInfo)
    async def user(self, user_id: str = PathParam(pattern=USER_ID_PATTERN)) -> UserInfo:
        size, prototype, weights = await asyncio.to_thread(self.frontend.describe, user_id)
        return UserInfo(user_id=user_id, history_size=size, prototype=prototype, weights=weights)

    @app.get("/v1/prototypes")
    async def prototypes(self) -> list[dict]:
        index = self.router.model.index
        assert index is not None
        return [{"id": p, "members": len(index.members(p))} for p in range(len(index))]

    @app.get("/healthz")
    async def healthz(self) -> dict:
        return {
            "status": "ok",
            "feedback_rows": await asyncio.to_thread(self.store.count),
            "methods": self.methods,
            "state_dir": str(Path(self.config.state_dir)),
        }
