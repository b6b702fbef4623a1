"""The HTTP ingress: validation, durable feedback, routing each request to its prototype shard.

Request path: read the user's stored history (plus any history sent with the request), embed
the texts (cached), place the user in a prototype from that history, and ask the shard of
that prototype to score. Feedback is committed to the store before
the response is sent, and every later score reads the history again, so the user is
re-adapted (weights, rubric, prototype) from their very next request.

Every endpoint but /healthz passes `serve_app.auth` when keys are configured: the key is checked
before the body is read (401, in a middleware), then its scope, its users and its rates
(403, 429).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import numpy as np
from fastapi import Depends, FastAPI, HTTPException, Query, Request, Security
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from ray import serve
from ray.serve.handle import DeploymentHandle

from personal_rm.embed import CachedEncoder, MiniLMEncoder
from personal_rm.pgenrm.prompt import LABELS
from personal_rm.pgenrm.scaling import TTSConfig
from personal_rm.serving.state import TEXT_JUDGES, Frontend, load_router
from personal_rm.serving.store import RequestIdReused, StoreUnavailable, open_store
from serve_app.api import (
    KEY_ID_PATTERN,
    LIMITS,
    USER_ID_PATTERN,
    BatchScoreRequest,
    BatchScoreResponse,
    FeedbackRequest,
    FeedbackResponse,
    KeyFeedback,
    KeyFeedbackDeleted,
    ScoreRequest,
    ScoreResponse,
    StoredFeedback,
    UserInfo,
)
from serve_app.auth import Auth, KeyRecord, load_keys
from serve_app.config import ServeAppConfig
from serve_app.rl import (
    RewardLedger,
    RewardOptions,
    RewardRequest,
    RewardResponse,
    group_requests,
    normalize_per_user,
    pointwise_rewards,
)

MAX_BODY_BYTES = 4 * 1024 * 1024

app = FastAPI(
    title="personal-rm",
    description="Personalized reward scoring: which response would *this* user prefer, and why.",
    version="0.1.0",
    # Served by the Ingress below instead, behind the same keys as the API.
    docs_url=None,
    redoc_url=None,
    openapi_url=None,
)
BEARER = HTTPBearer(
    auto_error=False,
    description="An API key, `prm_<id>_<secret>`; not needed when the server has no keys.",
)


async def caller(
    request: Request, _: Annotated[HTTPAuthorizationCredentials | None, Security(BEARER)]
) -> KeyRecord | None:
    """The calling key, as `authenticate` found it (None: auth is off). `_` only documents the
    scheme in OpenAPI; Basic credentials (browsers at /docs) are read too."""
    return request.state.caller


Caller = Annotated[KeyRecord | None, Depends(caller)]


@app.exception_handler(RequestValidationError)
async def invalid_request(request: Request, exc: RequestValidationError) -> Response:
    """422 naming each bad field, without echoing the input back: FastAPI's default reflects
    it, and a lone surrogate or an Infinity in it cannot be encoded (a 500 for a 4xx)."""
    errors = [{"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]} for e in exc.errors()]
    body = json.dumps({"detail": errors}, ensure_ascii=True, default=str)
    return Response(body, status_code=422, media_type="application/json")


@app.exception_handler(StoreUnavailable)
async def store_unavailable(request: Request, exc: StoreUnavailable) -> Response:
    """503 with the reason, not a 500: the database is down or unreachable, found out within
    the store's timeouts. Nothing was acknowledged; a retried feedback with its request_id is
    stored once."""
    return JSONResponse({"detail": str(exc)}, 503, headers={"Retry-After": "1"})


@app.middleware("http")
async def authenticate(request: Request, call_next):
    """401 before the body is read or parsed (a dependency would run after FastAPI's JSON
    parsing, so a malformed body got 422 first): no one without a key learns what the API
    accepts, or that a path exists. /healthz stays open for load balancers."""
    request.state.caller = None
    if request.url.path != "/healthz":
        ingress = serve.get_replica_context().servable_object
        try:
            request.state.caller = ingress.auth.authenticate(request.headers.get("authorization"))
        except HTTPException as error:
            return JSONResponse({"detail": error.detail}, error.status_code, error.headers)
    return await call_next(request)


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
        self.store = open_store(config.store_location)
        self.frontend = Frontend(self.router, self.store, self.encoder, LIMITS.max_history)
        self.methods = sorted({*self.router.judges, *(["genrm"] if config.genrm else [])})
        self.auth = Auth(load_keys(config.auth), config.auth)
        self.ledger = RewardLedger()
        log = logging.getLogger("ray.serve")
        if self.auth.enabled:
            log.info("auth on: %d API keys", len(self.auth.keys))
        else:
            log.warning(
                "auth is OFF: no API keys (auth.keys_file, $%s); anyone who can reach this port "
                "can score, read any user and write any user's feedback",
                config.auth.keys_env,
            )

    def check_method(self, method: str) -> None:
        if method not in self.methods:
            enabled = ", ".join(self.methods)
            raise HTTPException(400, f"method {method!r} is not enabled here ({enabled})")

    async def _score(self, req: ScoreRequest) -> ScoreResponse:
        self.check_method(req.method)
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
        scaling = self.scaling(req)
        history, request = prep.judge_inputs(req.method)
        result = await self.shard(prep.prototype).score.remote(
            prep.prototype,
            req.method,
            req.user_id,
            history,
            prep.vector,
            request,
            scaling,
            req.return_chains,
        )
        done = time.perf_counter()
        if result.verdict is None:
            raise HTTPException(503, "no valid evaluation chain was produced; retry")
        chains = result.individual + result.prototype if req.return_chains else None
        return ScoreResponse(
            user_id=req.user_id,
            scores=[float(s) for s in result.scores],
            preferred=int(result.verdict),
            prototype=prep.prototype,
            method=req.method,
            history_used=len(prep.history),
            parts={level: int(count) for level, count in result.counts.items()},
            alpha=float(result.alpha),
            chains=[c.model_dump() if c else None for c in chains] if chains is not None else None,
            timing_ms={
                "prepare": 1000 * (prepared - started),
                "score": 1000 * (done - prepared),
                "total": 1000 * (done - started),
            },
        )

    def scaling(self, req: ScoreRequest) -> TTSConfig:
        """The N and M the client set; the rest is the state's scaling, fitted and validated."""
        given = {key: value for key in ("n", "m") if (value := getattr(req, key)) is not None}
        return self.router.model.scaling.model_copy(update=given)

    def work(self, req: ScoreRequest) -> int:
        """Sampler work of a request, what rate limits count: N + M chains."""
        scaling = self.scaling(req)
        return scaling.n + scaling.m

    def shard(self, prototype: int) -> DeploymentHandle:
        """The shard deployment serving `prototype`, tagged with it when multiplexed."""
        handle = self.shards[prototype % len(self.shards)]
        if self.config.shard_layout == "multiplexed":
            return handle.options(multiplexed_model_id=str(prototype))
        return handle

    @app.post("/v1/score", response_model=ScoreResponse)
    async def score(self, req: ScoreRequest, who: Caller) -> ScoreResponse:
        """Scores for each response, for this user: test-time scaled chains of the method."""
        self.auth.authorize(who, "score", [req.user_id], self.work(req))
        return await self._score(req)

    @app.post("/v1/score/batch", response_model=BatchScoreResponse)
    async def score_batch(self, batch: BatchScoreRequest, who: Caller) -> BatchScoreResponse:
        """Many requests in one call, scored concurrently (what an RL trainer sends)."""
        work = sum(map(self.work, batch.requests))
        self.auth.authorize(who, "score", {r.user_id for r in batch.requests}, work)
        return BatchScoreResponse(results=await asyncio.gather(*map(self._score, batch.requests)))

    @app.post("/get_reward", response_model=RewardResponse)
    async def get_reward(
        self, req: RewardRequest, options: Annotated[RewardOptions, Query()], who: Caller
    ) -> RewardResponse:
        """OpenRLHF's remote reward model: one reward per query, for the user id in its label;
        pointwise for the feature judges, listwise per prompt for genrm (`serve_app/rl.py`)."""
        self.check_method(options.method)
        users, pairs = req.labels, req.split()
        if options.method in TEXT_JUDGES:
            plan = group_requests(users, pairs, options)
            self.auth.authorize(who, "score", set(users), sum(self.work(r) for _, r in plan))
            results = await asyncio.gather(*(self._score(r) for _, r in plan))
            rewards = np.empty(len(pairs))
            for (rows, _), result in zip(plan, results, strict=True):
                rewards[rows] = result.scores
        else:  # one adaptation per user, no sampler: a row costs one sample
            self.auth.authorize(who, "score", set(users), len(pairs))
            rewards = await asyncio.to_thread(
                pointwise_rewards, self.frontend, options.method, users, pairs
            )
        if options.normalize == "user":
            rewards = normalize_per_user(rewards, users)
        self.ledger.record(rewards.tolist())
        return RewardResponse(rewards=rewards.tolist())

    @app.post("/v1/feedback", response_model=FeedbackResponse)
    async def feedback(self, req: FeedbackRequest, who: Caller) -> FeedbackResponse:
        """Stored durably (committed) before this returns, with the key that wrote it; the
        next score uses it."""
        self.auth.authorize(who, "feedback", [req.user_id])
        comparison = req.comparison(req.user_id, "feedback")
        key = who.id if who else None
        try:
            row = await asyncio.to_thread(self.store.add, comparison, key, req.request_id)
        except RequestIdReused as error:
            raise HTTPException(409, str(error)) from error
        rows = await asyncio.to_thread(self.store.count, req.user_id)
        used = min(rows, LIMITS.max_history)
        return FeedbackResponse(id=row, user_id=req.user_id, history_rows=rows, history_used=used)

    @app.get("/v1/users/{user_id}", response_model=UserInfo)
    async def user(
        self, who: Caller, user_id: str = PathParam(pattern=USER_ID_PATTERN)
    ) -> UserInfo:
        self.auth.authorize(who, "score", [user_id])
        used, prototype, weights = await asyncio.to_thread(self.frontend.describe, user_id)
        rows = await asyncio.to_thread(self.store.count, user_id)
        return UserInfo(
            user_id=user_id,
            history_rows=rows,
            history_used=used,
            prototype=prototype,
            weights=weights,
        )

    @app.get("/v1/prototypes")
    async def prototypes(self, who: Caller) -> list[dict]:
        self.auth.authorize(who, "score")
        index = self.router.model.index
        assert index is not None
        return [{"id": p, "members": len(index.members(p))} for p in range(len(index))]

    @app.get("/v1/admin/keys/{key_id}/feedback", response_model=KeyFeedback)
    async def key_feedback(
        self,
        who: Caller,
        key_id: str = PathParam(pattern=KEY_ID_PATTERN),
        from_id: int = Query(0, ge=0),
        limit: int = Query(100, ge=1, le=1000),
    ) -> KeyFeedback:
        """The rows a key wrote, oldest first, a page at a time: what to review before a delete."""
        self.auth.authorize(who, "admin")
        rows = await asyncio.to_thread(self.store.rows_by_key, key_id, from_id, limit)
        return KeyFeedback(
            key_id=key_id,
            rows=[
                StoredFeedback(id=r.id, created_at=r.created_at, **r.comparison.to_row())
                for r in rows
            ],
            next_from_id=rows[-1].id + 1 if len(rows) == limit else None,
        )

    @app.delete("/v1/admin/keys/{key_id}/feedback", response_model=KeyFeedbackDeleted)
    async def delete_key_feedback(
        self,
        who: Caller,
        key_id: str = PathParam(pattern=KEY_ID_PATTERN),
        from_id: int = Query(0, ge=0, description="Only rows from this id on: one bad batch."),
    ) -> KeyFeedbackDeleted:
        """Undo a key's writes (a leaked or buggy key's poisoned batch): every later score of
        those users reads their history without them. Revoke the key in the keys file too."""
        self.auth.authorize(who, "admin")
        users = await asyncio.to_thread(self.store.delete_by_key, key_id, from_id)
        return KeyFeedbackDeleted(key_id=key_id, deleted=sum(users.values()), users=users)

    @app.get("/openapi.json", include_in_schema=False)
    async def openapi(self, request: Request, who: Caller) -> JSONResponse:
        self.auth.authorize(who)
        return JSONResponse(request.app.openapi())

    @app.get("/docs", include_in_schema=False)
    async def docs(self, request: Request, who: Caller) -> HTMLResponse:
        """Swagger UI; with keys on, a browser asks for one (Basic, the key as password)."""
        self.auth.authorize(who)
        schema = request.scope.get("root_path", "") + "/openapi.json"
        return get_swagger_ui_html(openapi_url=schema, title=f"{app.title} - Swagger UI")

    @app.get("/redoc", include_in_schema=False)
    async def redoc(self, request: Request, who: Caller) -> HTMLResponse:
        self.auth.authorize(who)
        schema = request.scope.get("root_path", "") + "/openapi.json"
        return get_redoc_html(openapi_url=schema, title=f"{app.title} - ReDoc")

    @app.get("/healthz")
    async def healthz(self) -> dict:
        """Open, for load balancers; with keys on it says nothing but that it is up."""
        if self.auth.enabled:
            return {"status": "ok"}
        return {
            "status": "ok",
            "feedback_rows": await asyncio.to_thread(self.store.count),
            "methods": self.methods,
            "state_dir": str(Path(self.config.state_dir)),
            "get_reward": asdict(self.ledger),  # this replica's; see serve_app/rl.py
        }
