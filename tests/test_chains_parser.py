"""The chain format round-trips, every failure is typed, and no generation makes it raise."""

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from personal_rm.backends import SamplingConfig
from personal_rm.backends.heuristic import HeuristicTeacher, write_chain
from personal_rm.pgenrm.chain import EvaluationChain
from personal_rm.pgenrm.llm_judge import (
    Judged,
    LLMJudge,
    TextRequest,
    judge_report,
    judge_tasks,
    make_tasks,
)
from personal_rm.pgenrm.parser import FailureKind, ParseFailure, parse_chain
from personal_rm.pgenrm.prompt import (
    CHAIN_END,
    CHAIN_START,
    SYSTEM_PROMPT,
    JudgeRequest,
    PromptBudget,
    read_request,
    render_chain,
    render_messages,
    shown_length,
    unshuffle,
)

from genrm_fixtures import toy_comparisons

REQUEST = JudgeRequest(
    history=(("Tell me about tea.", "Tea is fine: warm and kind.", "Tea is fine."),),
    prompt="Tell me about cats.",
    responses=("Cats are fine.", "Cats are fine: small and kind of nice."),
)


def chain_text(body: dict | str, analysis: str = "Thinking.") -> str:
    body = body if isinstance(body, str) else json.dumps(body)
    return f"{analysis}\n{CHAIN_START}\n{body}\n{CHAIN_END}"


def valid_body() -> dict:
    return {
        "persona": {"style": "plain", "content_and_structure": "short", "core_values": "truth"},
        "rubric": [
            {"name": "detail", "description": "says enough", "weight": 0.7},
            {"name": "tone", "weight": 0.3},
        ],
        "scores": {
            "A": {"detail": 3, "tone": 8, "total": 4.5},
            "B": {"detail": 9, "tone": 5, "total": 7.8},
        },
        "verdict": "B",
    }


def test_valid_chain_parses_and_totals_are_recomputed():
    chain = parse_chain(chain_text(valid_body()))
    assert isinstance(chain, EvaluationChain)
    assert chain.analysis == "Thinking."
    assert chain.final_scores() == pytest.approx([0.7 * 3 + 0.3 * 8, 0.7 * 9 + 0.3 * 5])
    assert chain.verdict == 1 and chain.verdict_follows_scores() and not chain.totals_disagree()

    lying = valid_body()
    lying["scores"]["B"]["total"] = 9.9
    assert parse_chain(chain_text(lying)).totals_disagree()


def test_rounded_weights_are_renormalised():
    body = valid_body()
    body["rubric"] = [{"name": n, "weight": 0.33} for n in ("a", "b", "c")]
    body["scores"] = {k: {"a": 5, "b": 5, "c": 5} for k in "AB"}
    chain = parse_chain(chain_text(body))
    assert isinstance(chain, EvaluationChain)
    assert sum(c.weight for c in chain.rubric) == pytest.approx(1.0)


def broken(path: str, value) -> str:
    body = valid_body()
    *parents, leaf = path.split(".")
    node = body
    for key in parents:
        node = node[key] if not key.isdigit() else node[int(key)]
    if value is KeyError:
        del node[leaf]
    else:
        node[leaf] = value
    return chain_text(body)


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ("The first response is better.", FailureKind.NO_MARKERS),
        (chain_text(valid_body())[:-20], FailureKind.NO_MARKERS),  # truncated generation
        (chain_text('{"persona": {"style": '), FailureKind.BAD_JSON),
        (chain_text("[1, 2]"), FailureKind.BAD_JSON),
        (broken("scores.B", KeyError), FailureKind.MISSING_RESPONSE),
        (broken("scores.A.detail", "high"), FailureKind.NON_NUMERIC_SCORE),
        (broken("scores.A.total", None).replace("null", '"n/a"'), FailureKind.NON_NUMERIC_SCORE),
        (broken("rubric.0.weight", 0.9), FailureKind.WEIGHTS_INCONSISTENT),
        (broken("rubric.0.weight", "most"), FailureKind.WEIGHTS_INCONSISTENT),
        (broken("scores.A.detail", 11), FailureKind.INVALID),
        (broken("scores.A.speed", 4), FailureKind.INVALID),
        (broken("verdict", "C"), FailureKind.INVALID),
        (broken("verdict", ""), FailureKind.INVALID),
        (broken("persona", KeyError), FailureKind.INVALID),
    ],
)
def test_each_failure_is_typed(text, kind):
    result = parse_chain(text)
    assert isinstance(result, ParseFailure)
    assert result.kind == kind, result.detail


def test_the_last_block_wins_over_a_quoted_format():
    """A model that repeats the system prompt's example first is judged on its real chain."""
    chain = parse_chain(SYSTEM_PROMPT + "\nNow mine:\n" + chain_text(valid_body()))
    assert isinstance(chain, EvaluationChain) and chain.verdict == 1


def test_render_chain_round_trips_and_unshuffle_maps_back():
    chain = write_chain(REQUEST, np.random.default_rng(0), temperature=1.0)
    parsed = parse_chain(render_chain(chain))
    assert parsed == chain
    back = unshuffle(parsed, [1, 0])  # shown A was the request's second response
    assert back.verdict == 1 - chain.verdict
    assert back.final_scores() == list(reversed(chain.final_scores()))


def test_prompt_carries_history_and_round_trips():
    messages = render_messages(REQUEST)
    assert [m["role"] for m in messages] == ["system", "user"]
    assert "Tea is fine: warm and kind." in messages[1]["content"]
    assert read_request(messages) == REQUEST
    cut = read_request(render_messages(REQUEST, max_text_chars=8))
    assert cut.responses == ("Cats are…[14 chars]", "Cats are…[38 chars]")
    assert [shown_length(r) for r in cut.responses] == [14, 38]  # the clip keeps the length
    assert read_request([{"role": "user", "content": "hello"}]) is None
    empty = JudgeRequest((), "Hi?", ("a", "b"))
    assert "no recorded choices" in render_messages(empty)[1]["content"]
    assert read_request(render_messages(empty)) == empty


def test_history_budget_keeps_the_latest_examples_that_fit():
    def words(text: str) -> int:  # a real counter, whitespace-split: 13 per example below
        return len(text.split())

    request = JudgeRequest(tuple((f"q{i}", "a b c", "d") for i in range(5)), "Q?", ("x", "y"))
    shown = read_request(render_messages(request, history_tokens=30, count_tokens=words))
    assert shown.history == request.history[-2:]
    none = render_messages(request, history_tokens=5, count_tokens=words)
    assert "no recorded choices" in none[1]["content"]
    with pytest.raises(ValueError, match="count_tokens"):
        render_messages(request, history_tokens=30)
    with pytest.raises(ValueError, match="tokenizer"):
        PromptBudget(history_tokens=30)


def test_history_texts_are_clipped_apart_from_the_request():
    shown = read_request(render_messages(REQUEST, max_text_chars=12, history_text_chars=6))
    assert shown.history[0][1] == "Tea is…[27 chars]" and shown.prompt == "Tell me abou…[19 chars]"


def test_rendered_chain_is_compact_json():
    chain = write_chain(REQUEST, np.random.default_rng(0), temperature=1.0)
    body = render_chain(chain).split(CHAIN_START)[1].split(CHAIN_END)[0].strip()
    assert body == json.dumps(json.loads(body), ensure_ascii=False, separators=(",", ":"))
    assert "description" not in body  # empty descriptions are not written


texts = st.text(st.characters(blacklist_characters="<>"), max_size=60)


@given(st.tuples(texts, texts, texts), texts, texts, texts)
def test_read_request_inverts_render_messages(example, prompt, first, second):
    request = JudgeRequest((example,), prompt, (first, second))
    assert read_request(render_messages(request)) == request


json_values = st.recursive(
    st.none() | st.booleans() | st.floats(allow_nan=True) | st.integers() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300))
def test_random_text_never_raises(text):
    assert isinstance(parse_chain(text), EvaluationChain | ParseFailure)


@settings(max_examples=300, deadline=None)
@given(json_values, st.sampled_from(["persona", "rubric", "scores", "verdict", "scores.A"]))
def test_random_json_in_any_field_never_raises(value, field):
    """Valid chains with one field replaced by arbitrary JSON: typed failure or a chain."""
    result = parse_chain(broken(field, value))
    assert isinstance(result, EvaluationChain | ParseFailure)


@settings(max_examples=200, deadline=None)
@given(st.integers(0, len(chain_text(valid_body()))), st.text(max_size=20))
def test_truncated_or_corrupted_generations_never_raise(cut, noise):
    text = chain_text(valid_body())
    result = parse_chain(text[:cut] + noise)
    assert isinstance(result, EvaluationChain | ParseFailure)
    if CHAIN_END not in text[:cut] + noise:
        assert result.kind == FailureKind.NO_MARKERS


def test_huge_numbers_and_deep_nesting_are_failures():
    assert parse_chain(broken("scores.A.detail", 10**400)).kind == FailureKind.NON_NUMERIC_SCORE
    assert parse_chain(chain_text("[" * 100_000)).kind == FailureKind.BAD_JSON
    infinite = chain_text(json.dumps(valid_body()).replace("0.7", "1e999"))
    assert parse_chain(infinite).kind == FailureKind.WEIGHTS_INCONSISTENT


class Scripted:
    """A backend double for the metric test: a chain, garbage, and a tie, in turn."""

    def generate(self, prompts, n, sampling):
        tie = valid_body()
        tie["scores"]["B"] = dict(tie["scores"]["A"])
        tie["verdict"] = "A"
        texts = [chain_text(valid_body()), "no idea", chain_text(tie)]
        return [[texts[i % 3]] * n for i in range(len(prompts))]


def test_failures_and_ties_count_as_wrong_and_are_reported():
    data = toy_comparisons(2, 6)
    tasks = make_tasks(data, data, 2, seed=0)
    report = judge_report(judge_tasks(Scripted(), tasks, n=2, sampling=SamplingConfig()))
    margins = [j.margin() for j in judge_tasks(Scripted(), tasks, n=2, sampling=SamplingConfig())]
    assert sum(math.isnan(m) for m in margins) == 4 and sum(m == 0 for m in margins) == 4
    correct = sum(m > 0 for m in margins)  # the first chain prefers shown B: right iff shuffled
    assert report["parse_failure_rate"] == pytest.approx(1 / 3)
    assert report["failures"] == {"no_markers": 8}
    assert report["accuracy"]["acc_sample"] == pytest.approx(correct / 12)
    assert report["accuracy_ties_half_sample"] == pytest.approx((correct + 2) / 12)
    assert report["accuracy_parsed_only"]["acc_sample"] == pytest.approx(correct / 8)
    assert report["tie_rate"] == pytest.approx(4 / 12)


def test_heuristic_teacher_reads_the_users_history():
    """The stand-in teacher is a (crude) personalised judge, far above chance on toy users."""
    data = toy_comparisons(8, 6)
    tasks = make_tasks(data, data, 3, seed=0)
    judged = judge_tasks(HeuristicTeacher(), tasks, n=2, sampling=SamplingConfig(temperature=1))
    report = judge_report(judged, n_boot=10)
    assert report["parse_failure_rate"] == 0.0
    assert report["accuracy"]["acc_sample"] >= 0.9
    assert isinstance(judged[0], Judged) and len(judged[0].texts) == 2


def test_llm_judge_samples_chains_in_request_order_for_each_history():
    """`LLMJudge` (the server's genrm judge): each history sees its own shuffle, and chains come
    back in the request's order, so the teacher's verdicts follow each user's own choices."""
    data = toy_comparisons(8, 6)
    by_user: dict[str, list] = {}
    for c in data:
        by_user.setdefault(c.user_id, []).append(c)
    judge = LLMJudge(HeuristicTeacher(), SamplingConfig(temperature=1), history_size=3)
    agreed = total = 0
    for *history, target in by_user.values():
        request = TextRequest(target.prompt, (target.chosen, target.rejected))
        chains = judge.sample_chains([history, []], request, 2, seed=1)
        assert [len(c) for c in chains] == [2, 2] and all(c is not None for c in chains[0])
        agreed += sum(c.verdict == 0 for c in chains[0])
        total += 2
    assert agreed / total >= 0.8  # the chosen response is index 0 of the request
    scripted = LLMJudge(Scripted(), SamplingConfig()).sample_chains([[], []], request, 3, seed=0)
    assert all(c is not None for c in scripted[0]) and scripted[1] == [None] * 3  # "no idea"
