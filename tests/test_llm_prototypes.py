"""Prototypes from a generative judge's own chains, and its dual-granularity margins.

The judge is the rule-based heuristic teacher behind the same backend interface as an LLM: it
reads each user's history from the prompt, so its personas tell the toy users who want long
answers (even ids) from those who want short ones (odd ids). That is the ground truth the
prototypes must recover from the chain texts alone, embedded by the real MiniLM.
"""

from functools import partial

import numpy as np
import pytest

from personal_rm.backends import SamplingConfig
from personal_rm.backends.heuristic import HeuristicTeacher
from personal_rm.pgenrm.llm_judge import judge_tasks, make_tasks
from personal_rm.pgenrm.llm_prototypes import fit_llm_prototypes, prototype_level
from personal_rm.pgenrm.prototypes import PrototypeConfig
from personal_rm.pgenrm.scaling import TTSConfig

from genrm_fixtures import toy_comparisons


def wants_long(user: str) -> bool:
    return int(user.removeprefix("u")) % 2 == 0


@pytest.fixture(scope="module")
def world(minilm):
    comparisons = toy_comparisons(12, 6, seed=3)
    members = [c for c in comparisons if int(c.user_id[1:]) < 8]
    scored = [c for c in comparisons if int(c.user_id[1:]) >= 8]
    sampling = SamplingConfig(temperature=0.7, seed=0)
    judge = partial(judge_tasks, HeuristicTeacher(), n=4, sampling=sampling)
    index, report = fit_llm_prototypes(
        partial(judge, n=1),
        members,
        minilm,
        PrototypeConfig(k=2),
        per_user=3,
        history_size=2,
    )
    return {"judge": judge, "index": index, "report": report, "members": members, "scored": scored}


def test_prototypes_from_the_judges_chains_group_users_by_taste(world):
    index, report = world["index"], world["report"]
    assert report["member_users"] == 8 and report["member_chains"] == 8 * 3
    assert report["member_parse_rate"] == 1.0
    for p in range(len(index)):
        tastes = {wants_long(u) for u in index.members(p)}
        assert len(tastes) == 1, list(index.members(p))  # one taste per prototype
    assert sorted(report["prototype_sizes"]) == [4, 4]


def test_the_prototype_level_asks_like_minded_members_and_mixes_by_alpha(world, minilm):
    judge, members = world["judge"], world["members"]
    targets = world["scored"][:8]
    judged = judge(make_tasks(targets, world["scored"], history_size=2))
    dual = prototype_level(
        partial(judge, n=1), judged, world["index"], members, minilm, m=3, history_size=2
    )
    config = TTSConfig(n=4, m=3, alpha=0.25)
    for d in dual:
        user = d.individual.task.comparison.user_id
        assert len(d.neighbours) == 3 and user not in d.neighbours
        assert {wants_long(n) for n in d.neighbours} == {wants_long(user)}
        for chain_of_neighbour, name in zip(d.prototype, d.neighbours, strict=True):
            assert chain_of_neighbour.task.comparison == d.individual.task.comparison
            assert chain_of_neighbour.task.order == d.individual.task.order
            assert {h.user_id for h in chain_of_neighbour.task.history} == {name}
        own = np.mean([c.final_scores() for c in d.individual.chains()], 0)
        near = np.mean([j.chains()[0].final_scores() for j in d.prototype], 0)
        expected = 0.25 * (own[0] - own[1]) + 0.75 * (near[0] - near[1])
        assert d.margin(config) == pytest.approx(expected)
    # The neighbours share the user's taste, so their chains prefer what the user chose.
    assert np.mean([d.margin(TTSConfig(alpha=0.0)) > 0 for d in dual]) == 1.0
