"""The rubric judge on synthetic users whose rewards are mixtures of *named* directions.

The criteria's "embeddings" are the true base rewards (plus distractors), so names have a
ground truth: a user who mostly weighs base 2 should see base 2's criterion on top of their
rubric, and a chain's verdict must be exactly what the user's reward says.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import numpy as np
import pytest

from personal_rm.features import PairSet
from personal_rm.mrm import MetaRewardModel, MRMConfig, split_support
from personal_rm.pgenrm.rubric import (
    OTHER,
    LibraryCriterion,
    RubricConfig,
    RubricJudge,
    RubricTrainingConfig,
)
from personal_rm.reward import LinearReward, margins

from synthetic_users import mixture_users

pytestmark = pytest.mark.usefixtures("one_thread")

DIM, BASES = 16, 4
CRITERIA = [
    LibraryCriterion(f"criterion {i}", aspect, f"Description {i}.")
    for i, aspect in enumerate(["style", "style", "content_and_structure", "core_values"] * 2)
]  # the first BASES are the true bases, the rest distractors
FAST = RubricTrainingConfig(epochs=25, outer_lr=3e-2, inner_lr=10.0)


class LookupEncoder:
    """Maps known texts to given vectors, anything else to a seeded random unit vector."""

    model_id, dim = "lookup", DIM

    def __init__(self, known: dict[str, np.ndarray]) -> None:
        self.known = known

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        def vector(text: str) -> np.ndarray:
            if text in self.known:
                return self.known[text]
            v = np.random.default_rng(zlib.crc32(text.encode())).normal(size=DIM)
            return v / np.linalg.norm(v)

        return np.stack([vector(t) for t in texts]).astype(np.float32)


def text(c: LibraryCriterion) -> str:
    return f"{c.name}: {c.description}"


@pytest.fixture(scope="module")
def world() -> dict:
    data = mixture_users(240, 48, dim=DIM, n_bases=BASES, concentration=0.2, seed=0)
    encoder = LookupEncoder({text(c): data.bases[i] for i, c in enumerate(CRITERIA[:BASES])})
    users = data.user_names
    seen, unseen = users[:160], users[160:]
    pairs = data.pairs
    return {
        "data": data,
        "encoder": encoder,
        "train": pairs.take(np.flatnonzero(np.isin(pairs.user_ids, seen))),
        "test": pairs.take(np.flatnonzero(np.isin(pairs.user_ids, unseen))),
    }


@pytest.fixture(scope="module")
def judge(world: dict) -> RubricJudge:
    judge = RubricJudge(RubricConfig(training=FAST), world["encoder"], CRITERIA)
    judge.fit(world["train"])
    return judge


def accuracy(rewards, query: PairSet) -> float:
    m = margins(rewards, query)
    return float(np.mean([np.mean(m[rows] > 0) for rows in query.rows_by_user().values()]))


def test_rubrics_predict_unseen_users_and_name_their_true_criterion(judge, world) -> None:
    support, query = split_support(world["test"], 16, seed=1)
    users = query.users()
    data, index = world["data"], {u: i for i, u in enumerate(world["data"].user_names)}
    oracle = accuracy({u: LinearReward(data.theta(index[u])) for u in users}, query)  # ~0.79
    fitted = accuracy(judge.personalize(support, users), query)
    cold = accuracy(judge.personalize(PairSet.empty(DIM), users), query)
    assert fitted > oracle - 0.05 and fitted > cold + 0.08, (oracle, fitted, cold)
    # Names mean something: the heaviest criterion is the user's true dominant base.
    rubrics = judge.rubrics(support, users)
    dominant = [u for u in users if data.weights[index[u]].max() > 0.7]
    hits = [np.argmax(rubrics[u]) == np.argmax(data.weights[index[u]]) for u in dominant]
    assert len(dominant) > 30 and np.mean(hits) > 0.85, (len(dominant), np.mean(hits))


def test_chain_is_an_exact_rendering_of_the_reward(judge, world) -> None:
    support, _ = split_support(world["test"], 8, seed=2)
    users = support.users()[:20]
    rubrics, rewards = judge.rubrics(support, users), judge.personalize(support, users)
    rng = np.random.default_rng(3)
    for user in users:
        responses = rng.normal(size=(3, DIM)).astype(np.float32) / np.sqrt(DIM)
        chain = judge.chain(rubrics[user], responses)
        finals, reward = np.array(chain.final_scores()), rewards[user].score(responses)
        assert chain.verdict == int(np.argmax(reward)) and chain.verdict_follows_scores()
        assert not chain.totals_disagree()
        # Final scores are one increasing affine map of the user's reward.
        slope = np.polyfit(reward, finals, 1)[0]
        np.testing.assert_allclose(finals, np.polyval(np.polyfit(reward, finals, 1), reward))
        assert slope > 0
        # The top criteria are named; the rest are folded into one exact line.
        assert len(chain.rubric) == judge.config.rubric_size + 1 and chain.rubric[-1].name == OTHER
        assert all(1 <= s <= 10 for line in chain.scores for s in line.scores.values())
        assert chain.persona.style and chain.analysis.endswith(".")
    # A batch of requests is scored request by request.
    batch = rng.normal(size=(4, 2, DIM)).astype(np.float32)
    each = np.stack([judge.criterion_scores(request) for request in batch])
    np.testing.assert_allclose(judge.criterion_scores(batch), each)


def test_posterior_draws_are_seeded_nested_and_concentrate(judge, world) -> None:
    test = world["test"]
    user = test.users()[0]
    history = test.for_user(user)
    a, b = judge.sample_rubrics([history], 8, seed=5)[0], judge.sample_rubrics([history], 4, 5)[0]
    np.testing.assert_allclose(a[:4], b)  # N draws are the first N of any larger N
    np.testing.assert_allclose(a.sum(1), 1.0)
    assert not np.allclose(a, judge.sample_rubrics([history], 8, seed=6)[0])
    spread = {
        k: np.mean([judge.sample_rubrics([test.for_user(u).take(range(k))], 16, 0)[0].std(0).sum()
                    for u in test.users()[:15]])
        for k in (4, 40)
    }  # fmt: skip
    assert spread[40] < 0.7 * spread[4], spread
    prior = judge.sample_rubrics([PairSet.empty(DIM)], 3, seed=0)[0]
    assert np.ptp(prior, axis=0).max() == 0  # no history: the prior n times


def test_sample_batches_histories_and_its_scores_are_the_chains(judge, world) -> None:
    test = world["test"]
    histories = [test.for_user(u) for u in test.users()[:3]]
    batch = np.random.default_rng(7).normal(size=(5, 2, DIM)).astype(np.float32)
    request = batch[0]
    samples = judge.sample(histories, request, n=4, seed=0, chains=True)
    assert samples.scores.shape == (3, 4, 2) and [len(c) for c in samples.chains] == [4, 4, 4]
    for own, scores in zip(samples.chains, samples.scores, strict=True):
        for chain, final in zip(own, scores, strict=True):
            assert chain.final_scores() == pytest.approx(list(final))
    # A batch of requests in one call: the scores of each request alone, and no chains.
    batched = judge.sample(histories, batch, n=4, seed=0)
    assert batched.chains is None and batched.scores.shape == (5, 3, 4, 2)
    np.testing.assert_allclose(batched.scores[0], samples.scores)


def test_mrm_as_a_judge_writes_chains_that_agree_with_it(world) -> None:
    mrm = MetaRewardModel(MRMConfig(num_bases=BASES, epochs=5, outer_lr=3e-2))
    mrm.fit(world["train"])
    judge = RubricJudge.from_mrm(mrm)
    support, query = split_support(world["test"], 8, seed=4)
    user = query.users()[0]
    reward = mrm.personalize(support, [user])[user]
    (weights,) = judge.rubrics(support, [user]).values()
    rows = query.for_user(user)
    for chosen, rejected in zip(rows.chosen, rows.rejected, strict=True):
        chain = judge.chain(weights, np.stack([chosen, rejected]))
        assert chain.verdict == int(reward.score(rejected[None])[0] > reward.score(chosen[None])[0])
        assert chain.rubric[0].name.startswith("base reward")


def test_brief_chains_are_what_a_small_judge_can_write_and_keep_the_verdict(world, judge) -> None:
    """Brief chains: names only, weights in cents, whole scores, exact totals, the full
    chain's verdict, which the rounded totals follow but for close calls."""
    from personal_rm.pgenrm.parser import parse_chain
    from personal_rm.pgenrm.prompt import render_chain

    test = world["test"]
    weights = judge.rubrics(test, test.users())
    kept = 0
    for i in range(40):
        w = weights[str(test.user_ids[i])]
        responses = np.stack([test.chosen[i], test.rejected[i]])
        full, brief = judge.chain(w, responses), judge.chain(w, responses, brief=True)
        assert all(c.description == "" for c in brief.rubric)
        assert all(100 * c.weight == pytest.approx(round(100 * c.weight)) for c in brief.rubric)
        assert all(float(v).is_integer() for s in brief.scores for v in s.scores.values())
        assert not brief.totals_disagree() and parse_chain(render_chain(brief), 2) == brief
        assert brief.verdict == full.verdict
        assert brief.analysis.startswith(f"Response {'AB'[full.verdict]} ")
        kept += brief.verdict_follows_scores() and len(set(brief.final_scores())) == 2
    assert kept >= 30


def test_the_rubric_teacher_writes_the_judges_chains_from_the_prompt(world, judge, tmp_path):
    """Through `generate`, from the prompt alone, after an artefact round trip: parseable
    brief chains whose verdict is the judge's own reward order (temperature 0, no history),
    and n distinct draws when the history allows them."""
    from personal_rm.backends import SamplingConfig
    from personal_rm.backends.rubric_teacher import RubricTeacher, load_teacher, save_teacher
    from personal_rm.embed import pair_text
    from personal_rm.pgenrm.parser import parse_chain
    from personal_rm.pgenrm.prompt import JudgeRequest, render_messages

    save_teacher(judge, tmp_path / "teacher")
    teacher = RubricTeacher(load_teacher(tmp_path / "teacher", world["encoder"]), world["encoder"])
    prior = judge.prior @ judge.heads
    agree = 0
    for i in range(20):
        request = JudgeRequest((), f"prompt {i}", (f"answer {i}a", f"answer {i}b"))
        (texts,) = teacher.generate([render_messages(request)], 3, SamplingConfig(temperature=0))
        chains = [parse_chain(t, 2) for t in texts]
        assert len(set(texts)) == 1 and len(chains[0].rubric) == 4  # 3 named + "other"
        texts = [pair_text(request.prompt, r) for r in request.responses]
        features = world["encoder"].encode(texts)
        finals = chains[0].final_scores()
        agree += finals[0] == finals[1] or chains[0].verdict == int(np.argmax(features @ prior))
    assert agree == 20
    history = tuple((f"p{j}", f"good {j}", f"bad {j}") for j in range(6))
    request = JudgeRequest(history, "prompt", ("answer a", "answer b"))
    (texts,) = teacher.generate([render_messages(request)], 4, SamplingConfig(temperature=1))
    assert len(set(texts)) > 1 and all(parse_chain(t, 2).rubric for t in texts)
    (refusal,) = teacher.generate([[{"role": "user", "content": "hi"}]], 2, SamplingConfig())
    assert [type(parse_chain(t, 2)).__name__ for t in refusal] == ["ParseFailure"] * 2
