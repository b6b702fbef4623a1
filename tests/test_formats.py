"""Public-format loaders: fixtures written in each dataset's published layout."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from personal_rm.data.comparison import Comparison, DataError
from personal_rm.data.formats import (
    FORMATS,
    conversation_text,
    load_any,
    load_personal_reward_bench,
    load_prism,
    load_summarize_feedback,
)
from personal_rm.data.io import load_comparisons, write_comparisons

FIXTURES = Path(__file__).parent / "fixtures" / "formats"
PRB = FIXTURES / "personal_reward_bench.jsonl"
PRISM = FIXTURES / "prism" / "conversations.jsonl"
SURVEY = FIXTURES / "prism" / "survey.jsonl"
SUMMARIZE = FIXTURES / "summarize_feedback" / "batch_fixture.json"


def fixture_rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def write_rows(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def error_of(loader, path: Path) -> str:
    with pytest.raises(DataError) as info:
        loader(path)
    return str(info.value)


# --- rendering -----------------------------------------------------------------------------


def test_render_messages_single_message_is_its_text_and_several_are_role_blocks():
    assert conversation_text([{"role": "user", "content": "hi"}]) == "hi"
    rendered = conversation_text(
        [
            {"role": "user", "content": "hi"},
            {"role": "model", "content": "hello"},
            {"role": "user", "content": "bye"},
        ]
    )
    assert rendered == "user: hi\n\nassistant: hello\n\nuser: bye"


# --- PersonalRewardBench -------------------------------------------------------------------


def test_personal_reward_bench_fixture_loads_every_row_with_its_split():
    result = load_personal_reward_bench(PRB)
    assert result.skipped == []
    first, multi_turn, third = result.comparisons
    assert first == Comparison(
        "user549",
        "Family value",
        "Family values are the shared beliefs that guide how a family treats each other.",
        "Parental control and family conflict are closely linked, a recent study says.",
    )
    assert first.meta == {"split": "train", "conversation_id": "c2956"}
    assert multi_turn.prompt == (
        "user: Recommend a board game for four players.\n\n"
        "assistant: Try Ticket to Ride: easy rules, about an hour.\n\n"
        "user: Something more strategic?"
    )
    assert multi_turn.chosen == "Terraforming Mars rewards long-term planning."
    assert [c.meta["split"] for c in result.comparisons] == ["train", "test", "val"]
    assert [c.user_id for c in result.comparisons] == ["user549", "user549", "user77"]
    assert third.rejected == "Nuclear power is dangerous and should be banned."


def test_personal_reward_bench_parquet_gives_the_same_comparisons(tmp_path):
    path = tmp_path / "prb.parquet"
    pq.write_table(pa.Table.from_pylist(fixture_rows(PRB)), path)
    from_parquet = load_personal_reward_bench(path).comparisons
    from_jsonl = load_personal_reward_bench(PRB).comparisons
    assert from_parquet == from_jsonl
    assert [c.meta for c in from_parquet] == [c.meta for c in from_jsonl]


def test_personal_reward_bench_accepts_plain_strings_and_message_lists(tmp_path):
    path = write_rows(
        tmp_path / "prb.jsonl",
        [
            {
                "user_id": "u1",
                "split": "train",
                "context": "Name a colour.",
                "chosen": "Teal.",
                "rejected": [{"role": "assistant", "content": "Red."}],
            }
        ],
    )
    (comparison,) = load_personal_reward_bench(path).comparisons
    assert (comparison.prompt, comparison.chosen, comparison.rejected) == (
        "Name a colour.",
        "Teal.",
        "Red.",
    )
    assert comparison.meta == {"split": "train"}


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda r: r.pop("user_id"), "field 'user_id': missing"),
        (lambda r: r.update(split=3), "field 'split': expected a string, got int"),
        (lambda r: r.update(context=7), "field 'context': expected a string, message or list"),
        (lambda r: r.update(context=[]), "field 'context': empty conversation"),
        (lambda r: r["context"][0].pop("content"), "field 'context[0].content': missing"),
        (lambda r: r["chosen"].update(content="  "), "field 'chosen.content': empty text"),
        (lambda r: r.update(rejected=r["chosen"]), "field 'rejected': identical to 'chosen'"),
    ],
)
def test_personal_reward_bench_malformed_row_names_line_and_field(tmp_path, change, expected):
    rows = fixture_rows(PRB)
    change(rows[1])
    path = write_rows(tmp_path / "prb.jsonl", rows)
    assert error_of(load_personal_reward_bench, path).startswith(f"{path}:2: {expected}")


def test_personal_reward_bench_skip_keeps_good_rows_and_locates_bad_ones(tmp_path):
    rows = fixture_rows(PRB)
    del rows[0]["split"]
    path = tmp_path / "prb.jsonl"
    path.write_text(json.dumps(rows[0]) + "\n{not json\n" + json.dumps(rows[2]) + "\n")
    result = load_personal_reward_bench(path, on_error="skip")
    assert [c.user_id for c in result.comparisons] == ["user77"]
    assert [(e.line, e.field) for e in result.skipped] == [(1, "split"), (2, None)]


# --- PRISM ---------------------------------------------------------------------------------


def test_prism_pairs_chosen_reply_with_each_lower_scored_reply_of_its_turn():
    comparisons = load_prism(PRISM).comparisons
    # c0 turn 0: 80 beats 60 and 30, ties the other 80; c0 turn 1: 70 beats 40;
    # c1: 55 beats 10, the 20 reply is PRISM's "EMPTY STRING" placeholder.
    assert [(c.user_id, c.meta["turn"], c.rejected) for c in comparisons] == [
        ("user0", 0, "Cook pasta."),
        ("user0", 0, "I cannot help with that."),
        ("user0", 1, "Grilled chicken salad."),
        ("user1", 0, "Never, it is not your business."),
    ]
    first, _, second_turn, _ = comparisons
    assert first.prompt == "What should I cook tonight?"
    assert first.chosen == "How about a mushroom risotto?"
    assert first.meta == {
        "conversation_id": "c0",
        "conversation_type": "unguided",
        "turn": 0,
        "chosen_model": "mistral-7b-instruct",
        "rejected_model": "gpt-3.5-turbo",
        "chosen_score": 80,
        "rejected_score": 60,
    }
    assert second_turn.prompt == (
        "user: What should I cook tonight?\n\n"
        "assistant: How about a mushroom risotto?\n\n"
        "user: Something vegetarian please."
    )
    assert second_turn.chosen == "A chickpea curry with rice."


def test_prism_survey_answers_go_into_meta():
    comparisons = load_prism(PRISM, survey_path=SURVEY).comparisons
    survey = comparisons[0].meta["survey"]
    assert set(survey) == {
        "stated_prefs",
        "self_description",
        "system_string",
        "lm_familiarity",
        "age",
        "gender",
        "education",
        "employment_status",
        "marital_status",
        "english_proficiency",
        "religion",
        "ethnicity",
        "location",
    }
    assert survey["stated_prefs"]["factuality"] == 90
    assert comparisons[3].meta["survey"]["system_string"] == "Be kind."
    assert "consent" not in survey


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda h: h[1].pop("if_chosen"), "field 'conversation_history[1].if_chosen': missing"),
        (
            lambda h: h[2].update(score="60"),
            "field 'conversation_history[2].score': expected an integer or a number, got str",
        ),
        (
            lambda h: h[5].update(content=""),
            "field 'conversation_history[5].content': empty text",
        ),
        (
            lambda h: h[0].update(role="system"),
            "field 'conversation_history[0].role': expected 'user' or 'model', got 'system'",
        ),
        (
            lambda h: h[6].update(if_chosen=False),
            "field 'conversation_history': turn 1 has no reply with if_chosen true",
        ),
        (
            lambda h: h.pop(5),
            "field 'conversation_history': turn 1 has replies but no user message",
        ),
    ],
)
def test_prism_malformed_conversation_names_line_and_field(tmp_path, change, expected):
    rows = fixture_rows(PRISM)
    change(rows[0]["conversation_history"])
    path = write_rows(tmp_path / "conversations.jsonl", rows)
    assert error_of(load_prism, path) == f"{path}:1: {expected}"
    result = load_prism(path, on_error="skip")
    assert [c.user_id for c in result.comparisons] == ["user1"]
    assert [(e.line, e.reason) for e in result.skipped] == [(1, expected.split(": ", 1)[1])]


def test_prism_bad_survey_line_is_reported_or_skipped(tmp_path):
    survey = tmp_path / "survey.jsonl"
    survey.write_text(SURVEY.read_text() + json.dumps({"user_id": 5}) + "\n")
    assert error_of(lambda p: load_prism(PRISM, survey_path=p), survey) == (
        f"{survey}:3: field 'user_id': expected a string, got int"
    )
    result = load_prism(PRISM, survey_path=survey, on_error="skip")
    assert len(result.comparisons) == 4
    assert [(e.source, e.line) for e in result.skipped] == [(str(survey), 3)]


# --- summarize-from-feedback ---------------------------------------------------------------


def test_summarize_feedback_uses_choice_worker_and_the_paper_query_format():
    comparisons = load_summarize_feedback(SUMMARIZE).comparisons
    tldr, second, cnndm = comparisons
    assert tldr.user_id == "ikNmucwunMnYJCQpnq6ZYb57OW7NiD"
    assert tldr.prompt == (
        "SUBREDDIT: r/legaladvice\n\nTITLE: Dutch law: car accident questions\n\n"
        "POST: I had a car accident on friday; the other driver was speeding but denies it."
        "\n\nCan I get an investigation going?\n\nTL;DR:"
    )
    assert tldr.chosen.startswith(" other driver was speeding")  # choice 1
    assert tldr.rejected == " car accident damaged my car, need info on what to do."
    assert tldr.meta == {
        "split": "train",
        "batch": "batch9",
        "info_id": "t3_2vwp1w",
        "chosen_policy": "ref",
        "rejected_policy": "sup4_ppo_rm3_kl10",
        "confidence": 8,
    }
    assert second.chosen == " roommate never does dishes, how do I bring it up without a fight?"
    assert second.meta["confidence"] is None
    assert cnndm.prompt == (
        "Article:\n\nNewcastle's Moussa Sissoko was sent off at Anfield and may be "
        "disciplined by the club.\n\nTL;DR:"
    )
    assert (cnndm.meta["split"], cnndm.meta["batch"]) == ("valid2", "cnndm1")


def test_summarize_feedback_reads_a_comparisons_folder(tmp_path):
    rows = fixture_rows(SUMMARIZE)
    write_rows(tmp_path / "batch3.json", rows[:1])
    write_rows(tmp_path / "batch4.json", rows[1:])
    (tmp_path / "README.txt").write_text("not data")
    result = load_summarize_feedback(tmp_path)
    assert [c.meta["batch"] for c in result.comparisons] == ["batch9", "batch10", "cnndm1"]


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda r: r.pop("worker"), "field 'worker': missing"),
        (lambda r: r.update(choice=2), "field 'choice': expected 0 or 1, got 2"),
        (lambda r: r.update(choice=True), "field 'choice': expected an integer, got bool"),
        (lambda r: r["summaries"].pop(), "field 'summaries': expected 2 summaries, got 1"),
        (lambda r: r["summaries"][1].update(text=""), "field 'summaries[1].text': empty text"),
        (
            lambda r: r["summaries"][1].update(text=r["summaries"][0]["text"]),
            "field 'summaries': both summaries have the same text",
        ),
        (lambda r: r["info"].pop("post"), "field 'info.post': missing (and no 'article' either)"),
        (lambda r: r["info"].update(title=None), "field 'info.title': missing"),
        (lambda r: r.update(info="post"), "field 'info': expected an object, got str"),
    ],
)
def test_summarize_feedback_malformed_row_names_line_and_field(tmp_path, change, expected):
    rows = fixture_rows(SUMMARIZE)
    change(rows[1])
    path = write_rows(tmp_path / "batch.json", rows)
    assert error_of(load_summarize_feedback, path) == f"{path}:2: {expected}"
    result = load_summarize_feedback(path, on_error="skip")
    assert len(result.comparisons) == 2
    assert [e.line for e in result.skipped] == [2]


# --- registry ------------------------------------------------------------------------------


def test_formats_registry_and_load_any_dispatch(tmp_path):
    expected = {
        "normalized": load_comparisons,
        "personal_reward_bench": load_personal_reward_bench,
        "prism": load_prism,
        "summarize_feedback": load_summarize_feedback,
    }
    assert expected == FORMATS
    normalized = tmp_path / "pairs.jsonl"
    write_comparisons(load_personal_reward_bench(PRB).comparisons, normalized)
    assert load_any(normalized).comparisons == load_personal_reward_bench(PRB).comparisons
    assert len(load_any(PRB, "personal_reward_bench").comparisons) == 3
    assert len(load_any(SUMMARIZE, "summarize_feedback").comparisons) == 3
    with_survey = load_any(PRISM, "prism", survey_path=SURVEY).comparisons
    assert with_survey[0].meta["survey"]["gender"] == "Female"


def test_load_any_passes_on_error_and_rejects_unknown_formats(tmp_path):
    rows = fixture_rows(SUMMARIZE)
    rows[0]["choice"] = 5
    path = write_rows(tmp_path / "batch.json", rows)
    result = load_any(path, "summarize_feedback", on_error="skip")
    assert (len(result.comparisons), [e.field for e in result.skipped]) == (2, ["choice"])
    with pytest.raises(ValueError, match="unknown format 'hh-rlhf' \\(known: normalized, "):
        load_any(path, "hh-rlhf")
