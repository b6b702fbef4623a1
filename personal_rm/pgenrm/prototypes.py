"""User prototypes (P-GenRM): cluster users by how they judge, so a new user can borrow a cluster.

    python -m bench.prototypes_scale --users 1000000   # fit time, memory, assignment latency

A user is one unit vector, from either
- "chain": the mean embedding of the texts (persona and weighted criteria) of the user's
  chains on their own comparisons, one text per comparison as the released P-GenRM code
  embeds them; or
- "preference": the mean feature difference chosen - rejected, a judge-free summary.
K-means on the unit vectors (scikit-learn; MiniBatchKMeans above `minibatch_above` users)
gives K prototypes. Assignment is the nearest centroid by cosine (O(K d), independent of how
many users there are); the neighbours of a vector are the M most cosine-similar members of its
prototype, and the index keeps the members' histories for the prototype-level chains.

Optional refinement, one epoch, after the released code: each centroid is trained as a
Bradley-Terry reward direction for its members' comparisons, shifted by an attention summary
of the member's own history; members are then reassigned to the refined centroids.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from sklearn.cluster import KMeans, MiniBatchKMeans

from personal_rm.artefacts import Artefact
from personal_rm.config import Config
from personal_rm.embed import TextEncoder
from personal_rm.features import PairSet
from personal_rm.pgenrm.chain import EvaluationChain


class PrototypeConfig(Config):
    """Defaults: chosen on llmfao's validation users with the scaling defaults
    (bench/results/scaling_llmfao.md: chain vectors, K=4, no refinement)."""

    representation: Literal["chain", "preference"] = Field(
        "chain",
        description="User vectors from chain texts (P-GenRM; validated) or preference differences.",
    )
    k: int = Field(
        4, ge=1, description="Number of prototypes K (capped at the number of users); validated: 4."
    )
    minibatch_above: int = Field(
        20_000, ge=1, description="Users beyond which MiniBatchKMeans replaces exact KMeans."
    )
    refine: bool = Field(False, description="One epoch of history-aware prototype refinement.")
    refine_lr: float = Field(1e-3, gt=0, description="AdamW lr of the refinement (released code).")
    seed: int = 0


def norms(x: np.ndarray) -> np.ndarray:
    """Row norms as a (..., 1) column, without an (n, d) temporary (1.5 GB at 1M users)."""
    return np.maximum(np.sqrt(np.einsum("...d,...d->...", x, x)), 1e-12)[..., None]


def unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / norms(x)


def preference_vectors(pairs: PairSet) -> dict[str, np.ndarray]:
    """Each user's unit mean of chosen - rejected."""
    diff = pairs.chosen - pairs.rejected
    return {u: unit(diff[rows].mean(0)) for u, rows in pairs.rows_by_user().items()}


def chain_text(chain: EvaluationChain) -> str:
    """What a chain says about the user: the persona, then the criteria by weight.

    Not the verdict or the reasons about this request's responses: those name responses by
    their position, which is arbitrary, and a representation that sees positions groups
    users by the order they were shown answers in.
    """
    p = chain.persona
    criteria = ", ".join(c.name for c in sorted(chain.rubric, key=lambda c: -c.weight))
    return f"{p.style} {p.content_and_structure} {p.core_values} Criteria: {criteria}."


def text_vectors(texts: Mapping[str, Sequence[str]], encoder: TextEncoder) -> dict[str, np.ndarray]:
    """Each user's unit mean embedding of their texts; every distinct text is encoded once."""
    distinct = sorted({t for user_texts in texts.values() for t in user_texts})
    if not distinct:
        return {}
    row = {t: i for i, t in enumerate(distinct)}
    emb = encoder.encode(distinct)
    return {u: unit(emb[[row[t] for t in ts]].mean(0)) for u, ts in texts.items() if ts}


def kmeans_centroids(x: np.ndarray, config: PrototypeConfig) -> np.ndarray:
    """K centroids of the (n, d) unit vectors: exact KMeans for a few users, MiniBatchKMeans
    beyond `minibatch_above` (the fit of a whole index, or of a sample of a larger one)."""
    k = min(config.k, len(x))
    if len(x) > config.minibatch_above:
        km = MiniBatchKMeans(k, batch_size=4096, n_init=1, random_state=config.seed)
    else:
        km = KMeans(k, n_init=4, random_state=config.seed)
    return km.fit(x).cluster_centers_


def nearest(vectors: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Nearest unit centroid by cosine (a vector's own norm cannot change its argmax)."""
    return np.argmax(np.asarray(vectors, dtype=np.float32) @ centroids.T, axis=-1)


class PrototypeIndex:
    """Centroids, members sorted by prototype (prototype p owns rows offsets[p]:offsets[p+1]),
    their vectors, and their histories."""

    def __init__(
        self,
        centroids: np.ndarray,
        users: Sequence[str],
        vectors: np.ndarray,
        histories: PairSet | None = None,
    ) -> None:
        self.centroids = unit(centroids)
        labels = self.assign_many(vectors)
        order = np.argsort(labels, kind="stable")
        self.users = np.asarray(users, dtype=object)[order]
        self.vectors = np.asarray(vectors, dtype=np.float32)[order]
        self.vectors /= norms(self.vectors)  # in place: one copy of the members' vectors
        self.labels = labels[order]
        self.offsets = np.searchsorted(self.labels, np.arange(len(self.centroids) + 1))
        self.histories = histories
        self._history_rows = histories.rows_by_user() if histories is not None else {}

    @classmethod
    def fit(
        cls,
        users: Sequence[str],
        vectors: np.ndarray,
        config: PrototypeConfig,
        histories: PairSet | None = None,
    ) -> PrototypeIndex:
        """K-means on the members' (n, d) vectors (normalised here); `histories` (the members'
        comparisons) are kept for the prototype level and are needed by the refinement."""
        x = unit(vectors)
        index = cls(kmeans_centroids(x, config), users, x, histories)
        if config.refine:
            if histories is None:
                raise ValueError("prototype refinement needs the members' histories")
            index = cls(refine(index, config), users, x, histories)
        return index

    def __len__(self) -> int:
        return len(self.centroids)

    def assign_many(self, vectors: np.ndarray) -> np.ndarray:
        return nearest(vectors, self.centroids)

    def assign(self, vector: np.ndarray) -> int:
        """Prototype of a user vector."""
        return int(self.assign_many(vector[None])[0])

    def members(self, prototype: int) -> np.ndarray:
        return self.users[self.offsets[prototype] : self.offsets[prototype + 1]]

    def neighbours(self, vector: np.ndarray, m: int, exclude: str | None = None) -> list[str]:
        """The m members of the vector's prototype closest by cosine (never `exclude`)."""
        p = self.assign(vector)
        lo, hi = self.offsets[p], self.offsets[p + 1]
        sims = self.vectors[lo:hi] @ np.asarray(vector, dtype=np.float32)
        best = [self.users[lo + i] for i in np.argsort(-sims, kind="stable")[: m + 1]]
        return [u for u in best if u != exclude][:m]

    def history(self, user: str) -> PairSet:
        """A member's comparisons (empty if the index was built without histories)."""
        if self.histories is None:
            raise ValueError("this index was built without member histories")
        return self.histories.take(self._history_rows.get(user, np.array([], np.int64)))

    def to_artefact(self) -> Artefact:
        """Centroids, members and their vectors; not the histories (the shards hold them)."""
        arrays = {"centroids": self.centroids, "vectors": self.vectors, "labels": self.labels}
        return Artefact(arrays, {"users": [str(u) for u in self.users]})

    @classmethod
    def from_artefact(cls, artefact: Artefact) -> PrototypeIndex:
        """The saved index bit for bit, without histories. Not through `__init__`: normalising
        the saved unit vectors again would move half of them by an ulp."""
        arrays = artefact.arrays
        index = cls.__new__(cls)
        index.centroids, index.vectors = arrays["centroids"], arrays["vectors"]
        index.users = np.asarray(artefact.meta["users"], dtype=object)
        index.labels = arrays["labels"]
        index.offsets = np.searchsorted(index.labels, np.arange(len(index.centroids) + 1))
        index.histories, index._history_rows = None, {}
        if not len(index.users) == len(index.vectors) == len(index.labels):
            raise ValueError("an index needs one vector and one label per member")
        return index


def refine(index: PrototypeIndex, config: PrototypeConfig) -> np.ndarray:
    """One epoch of the released code's prototype update, on feature differences.

    A member's comparisons are split in half: the first half is their history, each row of the
    second half a training sample. History events o_i = tanh(W_h d_i) are pooled by attention
    with the prototype a as query, s = sum_i softmax(o_i . a / sqrt(d)) o_i, and z = a + W_s s
    must rank the sample's pair: BT loss on z . d. Batches of 32 samples of one prototype;
    the prototype is renormalised after each step. Returns the refined unit (K, d) centroids;
    the centroid space must be the feature space (true for MiniLM vectors).
    """
    assert index.histories is not None
    torch.manual_seed(config.seed)
    dim = index.centroids.shape[1]
    if index.histories.dim != dim:
        raise ValueError("refinement needs user vectors in the feature space")
    protos = torch.nn.Parameter(torch.as_tensor(index.centroids))
    w_hist, w_sum = torch.nn.Linear(dim, dim), torch.nn.Linear(dim, dim)
    params = [protos, *w_hist.parameters(), *w_sum.parameters()]
    optimizer = torch.optim.AdamW(params, lr=config.refine_lr)
    diff = torch.as_tensor(index.histories.chosen - index.histories.rejected)
    rows = index._history_rows
    rng = np.random.default_rng(config.seed)
    for p in range(len(index)):
        members = [rows[u] for u in index.members(p) if len(rows.get(u, ())) >= 2]
        samples = [(r[: len(r) // 2], t) for r in members for t in r[len(r) // 2 :]]
        order = rng.permutation(len(samples))
        for start in range(0, len(samples), 32):  # the released code's batch size
            batch = [samples[i] for i in order[start : start + 32]]
            hist = _pad([diff[h] for h, _ in batch])
            target = diff[[t for _, t in batch]]
            events = torch.tanh(w_hist(hist.values))
            logits = (events @ protos[p]) / dim**0.5
            attention = torch.softmax(logits.masked_fill(~hist.mask, -torch.inf), dim=1)
            z = protos[p] + w_sum((attention[..., None] * events).sum(1))
            loss = F.softplus(-(target * z).sum(-1)).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            with torch.no_grad():
                protos[p] = F.normalize(protos[p], dim=0)
    return F.normalize(protos.detach(), dim=1).numpy()


class _Padded(NamedTuple):
    values: torch.Tensor  # (B, T, d)
    mask: torch.Tensor  # (B, T) True where a row is real


def _pad(parts: Sequence[torch.Tensor]) -> _Padded:
    values = torch.nn.utils.rnn.pad_sequence(list(parts), batch_first=True)
    lengths = torch.as_tensor([len(p) for p in parts])
    return _Padded(values, torch.arange(values.shape[1])[None] < lengths[:, None])
