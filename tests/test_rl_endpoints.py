"""RL trainers' endpoints: OpenRLHF's `/get_reward` on a real local Serve app, and the TRL reward
function of `personal_rm.client` against it; the request shape and planning without Ray."""

from __future__ import annotations

import math
import time

import httpx
import numpy as np
import pytest
from fastapi import HTTPException
from pydantic import ValidationError

from personal_rm.client import PersonalReward, RewardServerError, as_text, batches
from serve_app.rl import RewardOptions, RewardRequest, group_requests, normalize_per_user

PROMPT = "How do I keep a sourdough starter alive?"
ANSWERS = [
    "Feed it equal weights of flour and water every day and keep it at room temperature.",
    "Starters are alive. Good luck.",
    "1. Discard half. 2. Feed 1:1:1 flour, water, starter. 3. Repeat daily; refrigerate weekly.",
]


def rows(user: str, prompt: str = PROMPT, answers: list[str] = ANSWERS) -> dict:
    n = len(answers)
    return {"query": [prompt + a for a in answers], "prompts": [prompt] * n, "labels": [user] * n}


# -- the request shape and the plan, no Ray ---------------------------------------------------


def test_query_splits_after_its_prompt_or_is_all_response():
    req = RewardRequest.model_validate(rows("u1"))
    assert req.split() == [(PROMPT, a) for a in ANSWERS]
    bare = RewardRequest.model_validate({"query": ["just text"], "labels": ["u1"]})
    assert bare.split() == [("", "just text")]


@pytest.mark.parametrize(
    "change, field",
    [
        ({"labels": ["u1"]}, "labels: 1 items for 3 queries"),
        ({"prompts": [PROMPT]}, "prompts: 1 items for 3 queries"),
        ({"prompts": ["Another prompt"] * 3}, "query[0] does not start with prompts[0]"),
        ({"labels": ["u1", "bad id!", "u1"]}, "labels"),
        ({"query": []}, "query"),
    ],
)
def test_bad_requests_name_the_field(change, field):
    with pytest.raises(ValidationError) as error:
        RewardRequest.model_validate(rows("u1") | change)
    assert field in str(error.value)


def test_genrm_groups_by_user_and_prompt_in_even_chunks_of_at_most_eight():
    many = [f"answer {i}" for i in range(9)]
    users = ["u1"] * 9 + ["u2"] * 2
    pairs = [(PROMPT, a) for a in many] + [(PROMPT, a) for a in ANSWERS[:2]]
    plan = group_requests(users, pairs, RewardOptions(method="genrm", n=2, m=0))
    assert [rows for rows, _ in plan] == [[0, 1, 2, 3, 4], [5, 6, 7, 8], [9, 10]]
    assert all(r.method == "genrm" and r.n == 2 and r.m == 0 for _, r in plan)
    assert plan[2][1].user_id == "u2" and plan[2][1].responses == ANSWERS[:2]


def test_genrm_refuses_a_lone_completion_and_missing_prompts():
    pairs = [(PROMPT, "a"), (PROMPT, "b"), (PROMPT, "c")]
    with pytest.raises(HTTPException, match=r"labels\[2\]"):
        group_requests(["u1", "u1", "u2"], pairs, RewardOptions())
    with pytest.raises(HTTPException, match="prompts"):
        group_requests(["u1", "u1"], [("", "a"), ("", "b")], RewardOptions())


def test_per_user_normalisation():
    rewards = np.array([1.0, 3.0, 5.0, 10.0, 7.0])
    out = normalize_per_user(rewards, ["a", "a", "a", "b", "c"])
    assert out[:3].mean() == pytest.approx(0) and out[:3].std() == pytest.approx(1)
    assert out[3] == out[4] == 0.0  # a user with one row has nothing to be relative to


def test_client_reads_text_and_chat_messages():
    chat = [
        {"role": "system", "content": "You are a policy."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": [{"type": "text", "text": "Hel"}, {"text": "lo"}]},
    ]
    assert as_text("plain") == "plain"
    assert as_text(chat) == "Hi\n\nHello"


def test_client_batches_keep_a_prompts_completions_together():
    keys = [("u", "a")] * 3 + [("u", "b")] * 3 + [("v", "a")] * 5
    assert batches(keys, 64) == [range(0, 11)]
    assert batches(keys, 4) == [range(0, 3), range(3, 6), range(6, 9), range(9, 11)]
    assert batches([], 4) == []


def test_client_gives_up_after_bounded_retries_on_a_dead_server():
    dead = PersonalReward("http://127.0.0.1:9", attempts=2, backoff_s=0.01, timeout_s=1)
    with pytest.raises(RewardServerError, match="after 2 attempts"):
        dead(["p"], ["c"], user_id=["u1"])


# -- the live service ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def config(small_state, tmp_path_factory):
    from serve_helpers import RULE_JUDGE, on_small_state

    # genrm: the heuristic teacher through the backend interface writes valid chains on CPU
    return on_small_state(small_state, tmp_path_factory.mktemp("serve-rl"), genrm=RULE_JUDGE)


@pytest.fixture(scope="module")
def client(ray_session, config):
    from ray import serve

    from serve_app.deploy import deploy

    base = deploy(config)
    with httpx.Client(base_url=base, timeout=120) as client:
        yield client
    serve.shutdown()


def get_reward(client: httpx.Client, body: dict, **params) -> list[float]:
    return client.post("/get_reward", json=body, params=params).raise_for_status().json()["rewards"]


@pytest.mark.ray
@pytest.mark.parametrize("method", ["mrm", "rubric"])
def test_pointwise_rewards_do_not_depend_on_the_batch(client, method):
    batch = rows("llmfao_w14")
    together = get_reward(client, batch, method=method)
    singles = [{key: value[i : i + 1] for key, value in batch.items()} for i in range(3)]
    alone = [get_reward(client, single, method=method)[0] for single in singles]
    assert all(math.isfinite(r) for r in together)
    np.testing.assert_allclose(together, alone, rtol=1e-5, atol=1e-6)


@pytest.mark.ray
def test_feedback_moves_that_users_rewards_only(client):
    user = "rl_fresh_user"
    before = get_reward(client, rows(user), method="mrm")
    for _ in range(3):  # this user prefers the terse answer to the friendly one
        feedback = {"user_id": user, "prompt": PROMPT, "chosen": ANSWERS[1], "rejected": ANSWERS[0]}
        client.post("/v1/feedback", json=feedback).raise_for_status()
    after = get_reward(client, rows(user), method="mrm")
    assert after[1] - after[0] > before[1] - before[0]
    assert get_reward(client, rows("rl_other_user"), method="mrm") == pytest.approx(before)


@pytest.mark.ray
def test_genrm_scores_a_group_as_v1_score_does(client):
    group = get_reward(client, rows("llmfao_w14"), method="genrm", n=2, m=1)
    score = {"user_id": "llmfao_w14", "prompt": PROMPT, "responses": ANSWERS}
    score |= {"method": "genrm", "n": 2, "m": 1}
    expected = client.post("/v1/score", json=score).raise_for_status().json()["scores"]
    assert group == pytest.approx(expected)
    assert all(1 <= r <= 10 for r in group)


@pytest.mark.ray
def test_normalised_rewards_per_user(client):
    body = rows("llmfao_w14")
    body = {k: body[k] + rows("rl_other_user")[k] for k in body}
    rewards = np.array(get_reward(client, body, method="mrm", normalize="user"))
    for part in (rewards[:3], rewards[3:]):
        assert part.mean() == pytest.approx(0, abs=1e-9) and part.std() == pytest.approx(1)


@pytest.mark.ray
@pytest.mark.parametrize(
    "body, params, status, reason",
    [
        (rows("u1") | {"labels": ["u1"]}, {}, 422, "labels: 1 items for 3 queries"),
        (rows("u1") | {"labels": ["u1", "../etc", "u1"]}, {}, 422, '"labels", 1'),
        (rows("u1") | {"prompts": ["Other"] * 3}, {}, 422, "does not start with prompts[0]"),
        (rows("u1"), {"method": "bogus"}, 422, '"method"'),
        (rows("u1"), {"temperature": "2"}, 422, '"temperature"'),
        (rows("u1"), {"n": "0"}, 422, '"n"'),
        ({k: v[:1] for k, v in rows("u1").items()}, {"method": "genrm"}, 400, "labels[0]"),
    ],
)
def test_client_mistakes_are_4xx_naming_the_field(client, body, params, status, reason):
    response = client.post("/get_reward", json=body, params=params)
    assert response.status_code == status, response.text
    assert reason in response.text


@pytest.mark.ray
def test_trl_reward_function_gets_the_servers_rewards_and_the_ledger_counts_them(client, config):
    reward = PersonalReward(f"http://127.0.0.1:{config.port}", method="mrm", batch_size=4)
    prompts = [[{"role": "user", "content": PROMPT}]] * 3 + [PROMPT] * 3
    completions = [[{"role": "assistant", "content": a}] for a in ANSWERS] + ANSWERS
    users = ["llmfao_w14"] * 3 + ["llmfao_w14"] * 3
    before = client.get("/healthz").json()["get_reward"]
    # exactly what TRL 1.16 passes (GRPOTrainer._calculate_rewards), extra kwargs included
    trl_extras = {"completion_ids": [[1]] * 6, "trainer_state": None, "log_extra": print}
    got = reward(prompts=prompts, completions=completions, user_id=users, **trl_extras)
    after = client.get("/healthz").json()["get_reward"]
    direct = get_reward(client, rows("llmfao_w14"), method="mrm")
    assert reward.__name__ == "personal_reward" and got == pytest.approx(direct * 2)
    assert after["rewards"] - before["rewards"] == 6
    assert after["requests"] - before["requests"] == 2  # batches of at most 4, groups kept whole
    assert after["reward_sum"] - before["reward_sum"] == pytest.approx(sum(got))
    with pytest.raises(KeyError, match="user_id"):
        reward(prompts=prompts, completions=completions, uid=users)


# -- with API keys (last: it redeploys the app) -------------------------------------------


@pytest.mark.ray
def test_get_reward_passes_the_keys_scopes_users_and_rates(client, config, tmp_path):
    from personal_rm.config import merge
    from serve_app.auth import new_key
    from serve_app.deploy import ServeJobConfig, deploy

    keys = {
        "tenant": new_key(["score"], ["llmfao_w1*"]),
        "writer": new_key(["feedback"]),
        "slow": new_key(["score"], samples_per_s=2),  # a burst of 20 samples: 20 pointwise rows
    }
    keys_file = tmp_path / "keys.jsonl"
    keys_file.write_text("".join(f"{record.line()}\n" for _, record in keys.values()))
    keyed = merge(config.model_dump(mode="json"), {"app": {"auth": {"keys_file": str(keys_file)}}})
    deploy(ServeJobConfig.model_validate(keyed))

    def post(key: str | None, body: dict) -> httpx.Response:
        headers = {"Authorization": f"Bearer {keys[key][0]}"} if key else {}
        return client.post("/get_reward", json=body, headers=headers)

    assert post(None, rows("llmfao_w14")).status_code == 401
    assert post("writer", rows("llmfao_w14")).status_code == 403
    assert post("tenant", rows("llmfao_w14")).status_code == 200
    other = rows("llmfao_w14") | {"labels": ["llmfao_w14", "llmfao_w2", "llmfao_w14"]}
    refused = post("tenant", other)
    assert refused.status_code == 403 and "llmfao_w2" in refused.text
    eighteen = {key: value * 6 for key, value in rows("llmfao_w14").items()}  # 18 samples
    assert post("slow", eighteen).status_code == 200
    limited = post("slow", eighteen)
    assert limited.status_code == 429 and int(limited.headers["retry-after"]) >= 1
    # The client waits out Retry-After (the 2 samples left are short of 6) and then succeeds.
    patient = PersonalReward(str(client.base_url), api_key=keys["slow"][0], method="mrm")
    started = time.monotonic()
    assert len(patient([PROMPT] * 6, ANSWERS * 2, user_id=["llmfao_w14"] * 6)) == 6
    assert time.monotonic() - started >= 1
