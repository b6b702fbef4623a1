"""The rubric judge: P-GenRM's evaluation chains, written on CPU by a scorer with named criteria.

    python -m jobs.evaluate --methods rubric,rubric_tts --k 0,2,4,8

No LLM runs here, yet the prototype and scaling machinery needs a judge that writes real
chains. This one is MRM (`mrm.py`) with one base reward per *named* criterion of a library
("concise", "step-by-step structure", "empathetic tone", ...): criterion j scores a response by
a learned projection h_j . x of its features, and a user's rubric is the MRM mixture w_u on
the simplex (non-negative weights that sum to one), adapted on the user's history by MRM's
inner loop. Each head starts at the global Bradley-Terry reward plus a step along its
description's embedding (same encoder as the features), so a name says which way its head
first leans; MRM's meta-training then moves the heads.

A chain renders (w, features) exactly: criterion scores on 1-10 are one affine map of the
heads' outputs per request, so the final score sum_j w_j score_j is an increasing affine
function of the user's reward and the verdict is what the reward says. Sampling N scoring
schemes = N bootstrap replicates of the history, adapted in one batched inner loop.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import numpy as np
import torch
from pydantic import Field

from personal_rm.artefacts import Artefact
from personal_rm.config import Config
from personal_rm.embed import TextEncoder
from personal_rm.features import PairSet
from personal_rm.mrm import (
    MetaLearningConfig,
    MetaRewardModel,
    MRMConfig,
    MRMNet,
    adapt_many,
    build_net,
    meta_train_selected,
)
from personal_rm.pgenrm.chain import (
    Criterion,
    EvaluationChain,
    Persona,
    ResponseScore,
    Samples,
    rounded,
)
from personal_rm.pgenrm.prompt import LABELS
from personal_rm.reward import LinearReward

ASPECTS = ("style", "content_and_structure", "core_values")  # the `Persona` fields


class LibraryCriterion(NamedTuple):
    name: str
    aspect: str  # which persona field it describes
    description: str


LIBRARY: tuple[LibraryCriterion, ...] = tuple(
    LibraryCriterion(*row)
    for row in [
        ("concise", "style", "Short and to the point, with no padding or repetition."),
        ("detailed", "style", "Thorough and elaborate, covering details and nuances at length."),
        ("formal register", "style", "Formal, professional register and vocabulary."),
        ("casual tone", "style", "Casual, conversational and friendly tone."),
        ("empathetic tone", "style", "Warm, empathetic and emotionally supportive."),
        ("playful humour", "style", "Witty, playful and funny."),
        ("dry wit", "style", "Dry, deadpan or sarcastic humour."),
        ("edgy humour", "style", "Edgy, irreverent or risque humour that pushes boundaries."),
        ("confident voice", "style", "Assertive and confident, without hedging."),
        ("cautious hedging", "style", "Careful and hedged, acknowledging uncertainty."),
        ("plain language", "style", "Simple words a non-expert understands, no jargon."),
        ("technical depth", "style", "Technical, expert-level language and precision."),
        ("storytelling", "style", "Narrative, vivid, story-like delivery."),
        ("step-by-step structure", "content_and_structure", "Clear numbered steps in order."),
        ("lists and headings", "content_and_structure", "Bullet lists and headings to skim."),
        ("direct answer first", "content_and_structure", "Answers directly, then elaborates."),
        ("concrete examples", "content_and_structure", "Illustrates with concrete examples."),
        ("cites sources", "content_and_structure", "Cites sources, references or evidence."),
        ("factual accuracy", "content_and_structure", "Factually correct and precise."),
        ("completeness", "content_and_structure", "Addresses every part of the question."),
        ("relevance", "content_and_structure", "Stays on topic and relevant to the request."),
        ("coherence", "content_and_structure", "Logically coherent and well argued."),
        ("fluent grammar", "content_and_structure", "Grammatical, fluent and well written."),
        ("working code", "content_and_structure", "Correct, runnable code with explanation."),
        ("creativity", "content_and_structure", "Original, creative and surprising ideas."),
        ("practical advice", "content_and_structure", "Actionable, practical recommendations."),
        ("balanced perspectives", "content_and_structure", "Presents several views fairly."),
        ("sharp punchline", "content_and_structure", "A quick setup and a sharp punchline."),
        ("wordplay", "content_and_structure", "Puns and clever wordplay."),
        ("honesty", "core_values", "Honest and transparent; admits the limits of its knowledge."),
        ("safety", "core_values", "Avoids harmful or dangerous content."),
        ("inoffensive", "core_values", "Respectful; avoids demeaning stereotypes and slurs."),
        ("autonomy", "core_values", "Respects the reader's own choices; not preachy."),
        ("privacy", "core_values", "Protects privacy and personal data."),
        ("fairness", "core_values", "Fair and unbiased towards every group."),
        ("human connection", "core_values", "Values human relationships and community."),
        ("tech optimism", "core_values", "Optimistic about technology and progress."),
        ("ai scepticism", "core_values", "Sceptical of AI; stresses risks and human oversight."),
        ("helpfulness", "core_values", "Genuinely helpful; solves the actual problem."),
    ]
)

OTHER = "other criteria"  # the chain line that folds the criteria outside the top ones


class RubricTrainingConfig(MetaLearningConfig):
    """MRM's meta-learning loop with the defaults a ~40-criterion mixture needs. The bases are
    not configurable: one linear head per library criterion, started from the global reward
    along its description (`RubricConfig.text_step`)."""

    inner_lr: float = Field(
        10.0,
        gt=0,
        description="SGD on the criterion logits: with ~40 bases the softmax gradient per logit "
        "is far smaller than with MRM's 2; 10 was best of 3/10/30/100 on jester's validation "
        "users (3 and 10 tie on llmfao's).",
    )
    epochs: int = Field(60, ge=1, description="Passes over seen users; cosine-decayed lr.")


class RubricConfig(Config):
    text_step: float = Field(
        0.3,
        ge=0,
        description="How far each head starts from the global reward along its description's "
        "embedding (relative to the reward's norm): the name sets the head's first lean, and "
        "with centred directions the uniform mixture is still exactly the global model.",
    )
    rubric_size: int = Field(
        6,
        ge=1,
        description="Named criteria shown in a chain, by weight; the rest become one "
        "'other criteria' line whose score is their weighted mean, so totals stay exact.",
    )
    training: RubricTrainingConfig = Field(
        RubricTrainingConfig(), description="MRM meta-training of the heads and w0."
    )


def _user_key(history: PairSet) -> str:
    return str(history.user_ids[0]) if len(history) else ""


def resamples(histories: Sequence[PairSet], n: int, seed: int) -> list[PairSet]:
    """n bootstrap resamples of each non-empty history, one pseudo-user "i:j" per draw j of
    history i, seeded by (seed, the history's user id): a user's draw is the same whenever it
    is made."""
    parts: list[PairSet] = []
    for i, history in enumerate(histories):
        if not len(history):
            continue
        rng = np.random.default_rng([seed, zlib.crc32(_user_key(history).encode())])
        for j, rows in enumerate(rng.integers(0, len(history), (n, len(history)))):
            ids = np.full(len(rows), f"{i}:{j}", dtype=object)
            parts.append(PairSet(ids, history.chosen[rows], history.rejected[rows]))
    return parts


class RubricJudge:
    """Personal rubrics over named criteria: a `RewardModel` and a chain-writing judge.

    `personalize` gives each user's point-estimate rubric as a linear reward (the greedy
    chain); `sample` draws N rubrics per history from the bootstrap posterior and scores a
    request with each (test-time scaling's judge).
    """

    kind = "rubric"  # names the class in a saved state (`serving.state.JUDGE_KINDS`)

    def __init__(
        self,
        config: RubricConfig | None = None,
        encoder: TextEncoder | None = None,
        criteria: Sequence[LibraryCriterion] = LIBRARY,
        name: str = "rubric",
    ) -> None:
        self.config = config or RubricConfig()
        self.encoder, self.criteria, self.name = encoder, tuple(criteria), name
        self.mrm_config = MRMConfig(
            **self.config.training.model_dump(),
            num_bases=len(self.criteria),
            head="linear",
            init="global",
            init_noise=0.0,  # the heads start at the global reward plus their text step
        )
        self.net: MRMNet | None = None
        self.epochs_log: list[dict[str, float]] = []

    @classmethod
    def from_mrm(cls, model: MetaRewardModel) -> RubricJudge:
        """A fitted (linear) MRM as a judge: its bases become unnamed criteria."""
        if model.net is None or model.net.head != "linear":
            raise ValueError("from_mrm needs a fitted MRM with linear heads")
        criteria = [
            LibraryCriterion(f"base reward {i + 1}", "core_values", f"MRM base reward {i + 1}.")
            for i in range(model.net.num_bases)
        ]
        loop = model.config.model_dump(include=set(MetaLearningConfig.model_fields))
        config = RubricConfig(training=RubricTrainingConfig(**loop))
        judge = cls(config, criteria=criteria, name=model.name)
        judge.net = model.net
        return judge

    # -- artefact (personal_rm.artefacts) -------------------------------------------------------

    def to_artefact(self) -> Artefact:
        """The net's parameters as arrays; config, criteria and what rebuilds the net as JSON.
        The encoder is not part of it (the loader is given one)."""
        meta = {
            "name": self.name,
            "config": self.config.model_dump(mode="json"),
            "criteria": [list(c) for c in self.criteria],
            "mrm_config": self.mrm_config.model_dump(mode="json"),
            "dim": None if self.net is None else self.net.dim,
            "epochs_log": self.epochs_log,
        }
        net = {} if self.net is None else self.net.state_dict()
        return Artefact({k: v.detach().cpu().numpy() for k, v in net.items()}, meta)

    @classmethod
    def from_artefact(cls, artefact: Artefact, encoder: TextEncoder | None = None) -> RubricJudge:
        meta = artefact.meta
        criteria = [LibraryCriterion(*c) for c in meta["criteria"]]
        judge = cls(RubricConfig.model_validate(meta["config"]), encoder, criteria, meta["name"])
        judge.mrm_config = MRMConfig.model_validate(meta["mrm_config"])
        judge.epochs_log = meta["epochs_log"]
        if meta["dim"] is not None:
            judge.net = MRMNet(meta["dim"], judge.mrm_config)
            judge.net.load_state_dict({k: torch.from_numpy(v) for k, v in artefact.arrays.items()})
            judge.net.eval()  # as fitting leaves it (no layer behaves differently in training)
        return judge

    # -- training ------------------------------------------------------------------------------

    def text_directions(self) -> np.ndarray:
        """Unit criterion description embeddings, centred so their uniform mean is zero."""
        if self.encoder is None:
            raise ValueError("the rubric judge needs a text encoder to embed its criteria")
        emb = self.encoder.encode([f"{c.name}: {c.description}" for c in self.criteria])
        emb = emb.astype(np.float64) - emb.mean(0)
        return emb / np.linalg.norm(emb, axis=1, keepdims=True)

    def fit(self, train: PairSet, validation: PairSet | None = None) -> None:
        """Meta-train the criterion heads (MRM), keeping the epoch best on validation users."""
        cfg = self.mrm_config
        net = build_net(train, cfg)  # heads = the global BT reward
        with torch.no_grad():
            step = self.config.text_step * net.weight.norm(dim=1, keepdim=True)
            net.weight += step * torch.as_tensor(self.text_directions(), dtype=net.weight.dtype)
        self.epochs_log = meta_train_selected(net, train, cfg, validation)
        self.net = net

    # -- rubrics -------------------------------------------------------------------------------

    @property
    def heads(self) -> np.ndarray:
        """(K, d) criterion directions on raw features: criterion scores are features @ heads.T."""
        if self.net is None:
            raise RuntimeError("fit the rubric judge first")
        with torch.no_grad():
            return (self.net.weight * self.net.feature_scale).double().numpy()

    def rubrics(self, support: PairSet, users: Sequence[str]) -> dict[str, np.ndarray]:
        """Point-estimate criterion weights (K,) per user, adapted on their `support` rows."""
        if self.net is None:
            raise RuntimeError("fit the rubric judge first")
        weights = adapt_many(self.net, support, users, self.mrm_config)
        return {u: w.mixture.astype(np.float64) for u, w in weights.items()}

    def personalize(self, support: PairSet, users: Sequence[str]) -> Mapping[str, LinearReward]:
        heads = self.heads
        return {u: LinearReward(w @ heads) for u, w in self.rubrics(support, users).items()}

    @property
    def prior(self) -> np.ndarray:
        """w0 (K,): the rubric of a user with no history."""
        if self.net is None:
            raise RuntimeError("fit the rubric judge first")
        return self.rubrics(PairSet.empty(self.net.dim), ["prior"])["prior"]

    def sample_rubrics(
        self, histories: Sequence[PairSet], n: int, seed: int, max_rows: int = 200_000
    ) -> list[np.ndarray]:
        """n posterior draws of the criterion weights, (n, K), for each history.

        A draw is the inner loop run on a bootstrap resample of the history, all draws of all
        histories in one batched call (chunked to `max_rows` rows). The resample is seeded by
        (seed, the history's user id), so a neighbour's draw is the same whenever it is made:
        servers can cache it. An empty history gives w0 n times.
        """
        return self.resampled_rubrics(histories, resamples(histories, n, seed), n, max_rows)

    def resampled_rubrics(
        self,
        histories: Sequence[PairSet],
        parts: Sequence[PairSet],
        n: int,
        max_rows: int = 200_000,
    ) -> list[np.ndarray]:
        """`sample_rubrics` on resamples already drawn (`resamples(histories, n, seed)`)."""
        weights = {"prior": self.prior}
        step = max(1, max_rows // max([len(h) for h in histories] + [1]))
        for start in range(0, len(parts), step):
            merged = PairSet.concat(parts[start : start + step])
            weights.update(self.rubrics(merged, merged.users()))
        return [
            np.stack([weights.get(f"{i}:{j}", weights["prior"]) for j in range(n)])
            for i in range(len(histories))
        ]

    # -- chains --------------------------------------------------------------------------------

    def criterion_scores(
        self, responses: np.ndarray, heads: np.ndarray | None = None
    ) -> np.ndarray:
        """(..., R, K) scores in [1, 10] of each request's (..., R, d) responses: each head's
        outputs centred over the request's responses and divided by the request's largest
        deviation, one affine map for all criteria, so sum_j w_j score_j orders the responses
        exactly as the reward does, for every w. `heads` (..., K, d): other heads than the
        judge's (per history, for a judge with a personal criterion)."""
        heads = self.heads if heads is None else heads
        raw = np.asarray(responses, dtype=np.float64) @ np.swapaxes(heads, -1, -2)
        centred = raw - raw.mean(-2, keepdims=True)
        spread = np.abs(centred).max(axis=(-2, -1), keepdims=True)
        scaled = np.divide(centred, spread, out=np.zeros_like(centred), where=spread > 0)
        return np.clip(5.5 + 4.5 * scaled, 1.0, 10.0)

    def chain(
        self,
        weights: np.ndarray,
        responses: np.ndarray,
        brief: bool = False,
        heads: np.ndarray | None = None,
    ) -> EvaluationChain:
        """The evaluation chain of the rubric `weights` (K,) on one request's (R, d) responses.
        `brief`: as a small LLM judge learns to write it (a persona of criterion names, then
        `chain.rounded`), for the chains this judge teaches (`backends.rubric_teacher`).
        `heads` (K, d): as in `criterion_scores`."""
        scores = self.criterion_scores(responses, heads)
        finals = scores @ weights
        verdict = int(np.argmax(finals))
        order = np.argsort(-weights, kind="stable")
        shown, folded = order[: self.config.rubric_size], order[self.config.rubric_size :]
        rubric = [
            Criterion(name=c.name, description=c.description, weight=float(weights[j]))
            for j in shown
            for c in [self.criteria[j]]
        ]
        per_response: list[dict[str, float]] = [
            {self.criteria[j].name: float(scores[r, j]) for j in shown} for r in range(len(finals))
        ]
        rest = float(weights[folded].sum())
        if len(folded):
            names = ", ".join(self.criteria[j].name for j in folded)
            rubric.append(Criterion(name=OTHER, description=names, weight=rest))
            for r, line in enumerate(per_response):
                mean = scores[r, folded] @ weights[folded] / rest if rest > 0 else 5.5
                line[OTHER] = float(np.clip(mean, 1.0, 10.0))
        lead = scores[verdict] - scores.mean(0)  # how much each criterion favours the verdict
        decisive = [self.criteria[j].name for j in np.argsort(-weights * lead)[:3]]
        winner = LABELS[verdict] if brief else verdict  # brief chains speak the prompt's labels
        full = EvaluationChain(
            analysis=f"Response {winner} wins mostly on: {', '.join(decisive)}.",
            persona=self.persona(weights, brief),
            rubric=rubric,
            scores=[
                ResponseScore(response=r, scores=line, stated_total=float(finals[r]))
                for r, line in enumerate(per_response)
            ],
            verdict=verdict,
        )
        return rounded(full) if brief else full

    def persona(self, weights: np.ndarray, brief: bool = False) -> Persona:
        """Each persona field = the descriptions (`brief`: the names) of that aspect's two
        heaviest criteria."""
        text = {}
        for aspect in ASPECTS:
            mine = [j for j, c in enumerate(self.criteria) if c.aspect == aspect]
            top = sorted(mine, key=lambda j: -weights[j])[:2]
            words = [self.criteria[j].name if brief else self.criteria[j].description for j in top]
            text[aspect] = (", " if brief else " ").join(words) or "No preference."
        return Persona(**text)

    def sample(
        self,
        histories: Sequence[PairSet],
        request: np.ndarray,
        n: int,
        seed: int,
        chains: bool = False,
    ) -> Samples:
        """n chains for each history on a request, (R, d) response features, in one batch."""
        return self.score_draws(np.stack(self.sample_rubrics(histories, n, seed)), request, chains)

    def score_draws(self, draws: np.ndarray, request: np.ndarray, chains: bool = False) -> Samples:
        """The chains of (H, n, K) rubric draws on a request (R, d), or on a batch (..., R, d):
        their final scores are criterion scores @ weights, one matmul for the whole batch; the
        chains are rendered (for an unbatched request) only when asked."""
        scores = np.einsum("...rk,hnk->...hnr", self.criterion_scores(request), draws)
        rendered = [[self.chain(w, request) for w in row] for row in draws] if chains else None
        return Samples(scores, rendered)

    def history_chains(self, pairs: PairSet) -> dict[str, list[EvaluationChain]]:
        """Each user's point-estimate chain on each of their own comparisons (chosen first):
        the per-sample analyses that prototype representations embed."""
        weights = self.rubrics(pairs, pairs.users())
        return {
            user: [
                self.chain(weights[user], np.stack([pairs.chosen[i], pairs.rejected[i]]))
                for i in rows
            ]
            for user, rows in pairs.rows_by_user().items()
        }
