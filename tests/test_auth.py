"""Access control: keys, scopes, user bindings, rates and provenance, on the real Serve app."""

import base64
import os
import time

import httpx
import pytest
from fastapi import HTTPException

from serve_app.auth import Auth, KeyRecord, load_keys, main, new_key, parse_keys
from serve_app.config import AuthConfig

REQUEST = {
    "prompt": "Write a haiku about autumn.",
    "responses": [
        "Leaves drift, cold and gold,\nwind hums through the empty trees,\nthe year exhales slow.",
        "Autumn is a season.",
    ],
    "method": "rubric",
    "n": 8,
    "m": 2,
}


def status(call) -> tuple[int, str, dict]:
    try:
        call()
    except HTTPException as e:
        return e.status_code, e.detail, e.headers or {}
    return 200, "", {}


# -- the gatekeeper alone -------------------------------------------------------------------------


def test_keys_authenticate_by_hash_and_answers_never_echo_them(tmp_path):
    key, record = new_key(["score"], ["tenant_a_*", "alice"])
    other, _ = new_key(["score"])
    auth = Auth(parse_keys(record.line(), "keys"), AuthConfig())
    assert key not in record.line() and record.sha256 in record.line()
    assert auth.authenticate(f"Bearer {key}") == record
    basic = base64.b64encode(f"anyone:{key}".encode()).decode()
    assert auth.authenticate(f"Basic {basic}") == record  # a browser at /docs
    forged = key[:-4] + ("AAAA" if not key.endswith("AAAA") else "BBBB")
    for header in (
        None,
        "",
        "Bearer",
        f"Bearer {other}",
        f"Bearer {forged}",
        f"Token {key}",
        "Basic !!!",
        "Basic " + base64.b64encode(b"\xff:\xfe").decode(),
        "Basic \xe9t\xe9",  # a header's non-ASCII bytes (read as latin-1): once a 500
        "Bearer prm_",
    ):
        code, detail, headers = status(lambda h=header: auth.authenticate(h))
        assert code == 401 and "Bearer" in headers["WWW-Authenticate"], header
        assert key not in detail and other not in detail and forged not in detail
    assert record.may_act_for("tenant_a_7") and record.may_act_for("alice")
    assert not record.may_act_for("tenant_b_1") and not record.may_act_for("alice2")


def test_scopes_bindings_and_the_keyless_default():
    _, writer = new_key(["feedback"], ["tenant_a_*"])
    _, admin = new_key(["admin"])
    auth = Auth({k.id: k for k in (writer, admin)}, AuthConfig())
    assert status(lambda: auth.authorize(writer, "feedback", ["tenant_a_1"]))[0] == 200
    code, detail, _ = status(lambda: auth.authorize(writer, "score", ["tenant_a_1"]))
    assert code == 403 and "scope 'score'" in detail
    code, detail, _ = status(lambda: auth.authorize(writer, "feedback", ["tenant_b_1"]))
    assert code == 403 and "tenant_b_1" in detail
    assert status(lambda: auth.authorize(admin, "feedback", ["anyone"]))[0] == 200
    keyless = Auth({}, AuthConfig())
    assert not keyless.enabled and keyless.authenticate(None) is None
    assert status(lambda: keyless.authorize(None, "feedback", ["x"], 10_000))[0] == 200
    assert status(lambda: keyless.authorize(None, "admin"))[0] == 403  # no provenance to undo


def test_rates_count_sampler_work_and_recover():
    _, key = new_key(["score"], samples_per_s=10)
    auth = Auth({key.id: key}, AuthConfig(burst_s=2, requests_per_s=100))
    assert status(lambda: auth.charge(key, 12, now=0.0))[0] == 200  # 20 saved, 8 left
    code, detail, headers = status(lambda: auth.charge(key, 12, now=0.1))
    assert code == 429 and headers["Retry-After"] == "1" and "samples/s" in detail
    assert status(lambda: auth.charge(key, 12, now=0.5))[0] == 200  # refilled 4 more
    # A request larger than the whole burst passes from a full bucket and leaves a debt.
    assert status(lambda: auth.charge(key, 50, now=10.0))[0] == 200
    code, _, headers = status(lambda: auth.charge(key, 1, now=10.0))
    assert code == 429 and headers["Retry-After"] == "4"  # 30 owed + 1, at 10 a second
    _, chatty = new_key(["score"], requests_per_s=1)
    auth = Auth({chatty.id: chatty}, AuthConfig(burst_s=2))
    assert [status(lambda: auth.charge(chatty, 0, now=0.0))[0] for _ in range(3)] == [200, 200, 429]


def test_key_files_fail_loudly(tmp_path, monkeypatch):
    _, a = new_key(["score"])
    _, b = new_key(["admin"])
    path = tmp_path / "keys.jsonl"
    path.write_text(f"# tenant A\n{a.line()}\n\n")
    monkeypatch.setenv("TEST_KEYS", b.line())
    assert load_keys(AuthConfig(keys_file=path, keys_env="TEST_KEYS")) == {a.id: a, b.id: b}
    path.write_text("# every key revoked\n")
    with pytest.raises(ValueError, match="holds no keys"):
        load_keys(AuthConfig(keys_file=path, keys_env="TEST_KEYS"))
    path.write_text(f"{a.line()}\n{a.line()}\n")
    with pytest.raises(ValueError, match=r":2: key id .* twice"):
        load_keys(AuthConfig(keys_file=path))
    path.write_text(a.line().replace('"score"', '"write"'))
    with pytest.raises(ValueError, match=":1: not a key line"):
        load_keys(AuthConfig(keys_file=path))


def test_the_new_key_command_prints_the_key_once_and_a_hash_line(capsys):
    main(["new-key", "--scope", "feedback", "--users", "tenant_a_*,bob", "--name", "tenant A"])
    lines = [line for line in capsys.readouterr().out.splitlines() if not line.startswith("#")]
    key, line = lines
    record = KeyRecord.model_validate_json(line)
    assert key not in line and record.users == ("tenant_a_*", "bob")
    assert Auth({record.id: record}, AuthConfig()).authenticate(f"Bearer {key}") == record


# -- the real app over HTTP ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def keys() -> dict[str, tuple[str, KeyRecord]]:
    return {
        "reader": new_key(["score"]),
        "tenant_a": new_key(["score", "feedback"], ["tenant_a_*"]),
        "tenant_a_bot": new_key(["feedback"], ["tenant_a_*"]),
        "slow": new_key(["score"], samples_per_s=5),
        "admin": new_key(["admin"]),
    }


@pytest.fixture(scope="module")
def server(ray_session, small_state, tmp_path_factory, keys):
    """The app with keys: four from the keys file, the admin's from the environment (the path
    a secret store takes), on its own port."""
    from ray import serve

    from serve_app.deploy import deploy

    from serve_helpers import on_small_state

    root = tmp_path_factory.mktemp("serve-auth")
    keys_file = root / "keys.jsonl"
    keys_file.write_text(
        "".join(f"{record.line()}\n" for name, (_, record) in keys.items() if name != "admin")
    )
    auth = {"keys_file": str(keys_file), "keys_env": "TEST_AUTH_KEYS", "burst_s": 1}
    config = on_small_state(small_state, root, auth=auth)  # the store holds all of LLMFAO
    os.environ["TEST_AUTH_KEYS"] = keys["admin"][1].line()
    try:
        deploy(config)
    finally:
        del os.environ["TEST_AUTH_KEYS"]
    with httpx.Client(base_url=f"http://127.0.0.1:{config.port}", timeout=120) as client:
        yield client
    serve.shutdown()


def bearer(keys, name: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {keys[name][0]}"}


@pytest.mark.ray
def test_every_endpoint_wants_a_key_and_the_right_one(server, keys):
    score = {**REQUEST, "user_id": "llmfao_w14"}
    feedback = {"user_id": "tenant_a_1", "prompt": "p", "chosen": "a", "rejected": "b"}
    admin = f"/v1/admin/keys/{keys['tenant_a'][1].id}/feedback"
    calls = [
        ("POST", "/v1/score", score),
        ("POST", "/v1/score/batch", {"requests": [score]}),
        ("POST", "/v1/feedback", feedback),
        ("GET", "/v1/users/llmfao_w14", None),
        ("GET", "/v1/prototypes", None),
        ("GET", admin, None),
        ("DELETE", admin, None),
        ("GET", "/docs", None),
        ("GET", "/openapi.json", None),
        ("GET", "/redoc", None),
    ]
    forged = keys["reader"][0][:-3] + "xyz"
    for method, path, body in calls:
        for headers in ({}, {"Authorization": f"Bearer {forged}"}):
            response = server.request(method, path, json=body, headers=headers)
            assert response.status_code == 401, (method, path, response.text)
            assert forged not in response.text and "Basic" in response.headers["www-authenticate"]
    # No key and an invalid body, or one that is not JSON at all (FastAPI parses a body before
    # it runs dependencies): 401, not a 422 that describes the API; an unknown path too.
    assert server.post("/v1/score", json={"user_id": "x"}).status_code == 401
    garbage = {"content": b"{not json", "headers": {"content-type": "application/json"}}
    assert server.post("/v1/feedback", **garbage).status_code == 401
    assert server.get("/v1/no-such-path").status_code == 401
    assert server.get("/healthz").status_code == 200
    wrong_scope = [
        ("reader", "POST", "/v1/feedback", {**feedback, "user_id": "llmfao_w14"}),
        ("tenant_a_bot", "POST", "/v1/score", {**score, "user_id": "tenant_a_1"}),
        ("tenant_a", "GET", admin, None),
        ("tenant_a", "DELETE", admin, None),
    ]
    wrong_user = [
        ("tenant_a", "POST", "/v1/score", score),
        (
            "tenant_a",
            "POST",
            "/v1/score/batch",
            {"requests": [{**score, "user_id": "tenant_a_1"}, score]},
        ),
        ("tenant_a", "GET", "/v1/users/llmfao_w14", None),
    ]
    for name, method, path, body in wrong_scope + wrong_user:
        response = server.request(method, path, json=body, headers=bearer(keys, name))
        assert response.status_code == 403, (name, method, path, response.text)
        reason = "lacks scope" if (name, method, path, body) in wrong_scope else "may not act for"
        assert reason in response.json()["detail"] and keys[name][0] not in response.text
    assert server.get("/v1/prototypes", headers=bearer(keys, "reader")).status_code == 200
    assert server.get("/healthz").json() == {"status": "ok"}  # open, and tells nothing


@pytest.mark.ray
def test_docs_open_with_a_key_in_a_browser_too(server, keys):
    basic = base64.b64encode(f"me:{keys['reader'][0]}".encode()).decode()
    assert "swagger" in server.get("/docs", headers={"Authorization": f"Basic {basic}"}).text
    schema = server.get("/openapi.json", headers=bearer(keys, "reader")).json()
    assert "/v1/admin/keys/{key_id}/feedback" in schema["paths"]
    assert "HTTPBearer" in schema["components"]["securitySchemes"]


@pytest.mark.ray
def test_a_bound_key_cannot_write_another_tenants_user(server, keys):
    for user, expected in (("tenant_a_1", 200), ("tenant_b_1", 403), ("llmfao_w14", 403)):
        body = {"user_id": user, "prompt": "p", "chosen": "a", "rejected": "b"}
        response = server.post("/v1/feedback", json=body, headers=bearer(keys, "tenant_a"))
        assert response.status_code == expected, (user, response.text)
    reader = bearer(keys, "reader")
    assert server.get("/v1/users/tenant_b_1", headers=reader).json()["history_rows"] == 0
    assert server.get("/v1/users/tenant_a_1", headers=reader).json()["history_rows"] == 1


@pytest.mark.ray
def test_history_counts_say_rows_stored_and_rows_used(server, keys):
    info = server.get("/v1/users/llmfao_w14", headers=bearer(keys, "reader")).json()
    assert info["history_rows"] > info["history_limit"] == info["history_used"] == 64
    posted = server.post(
        "/v1/feedback",
        json={"user_id": "llmfao_w14", "prompt": "p", "chosen": "a", "rejected": "b"},
        headers=bearer(keys, "admin"),
    ).json()
    assert posted["history_rows"] == info["history_rows"] + 1 and posted["history_used"] == 64


@pytest.mark.ray
def test_a_key_over_its_sampler_rate_gets_429_then_recovers(server, keys):
    """`slow` may spend 5 samples a second (burst 1 s); a request costs n + m = 10, so the
    first leaves a debt of 5 and the next may come 2 s later, whatever the machine's speed."""
    body = {**REQUEST, "user_id": "llmfao_w14"}
    codes = [server.post("/v1/score", json=body, headers=bearer(keys, "slow")) for _ in range(2)]
    assert [r.status_code for r in codes] == [200, 429], codes[-1].text
    retry = int(codes[-1].headers["retry-after"])
    assert 1 <= retry <= 2 and "5 samples/s" in codes[-1].json()["detail"]
    # Other keys are not slowed by this one.
    assert server.post("/v1/score", json=body, headers=bearer(keys, "reader")).status_code == 200
    time.sleep(retry)
    assert server.post("/v1/score", json=body, headers=bearer(keys, "slow")).status_code == 200


@pytest.mark.ray
def test_provenance_lets_an_admin_undo_a_poisoned_batch(server, keys):
    user = "tenant_a_victim"
    body = {**REQUEST, "user_id": user}
    margin = lambda r: r["scores"][1] - r["scores"][0]  # noqa: E731
    honest = {
        "user_id": user,
        "prompt": REQUEST["prompt"],
        "chosen": REQUEST["responses"][0],
        "rejected": REQUEST["responses"][1],
    }
    ok = server.post("/v1/feedback", json=honest, headers=bearer(keys, "tenant_a"))
    assert ok.status_code == 200, ok.text
    before = server.post("/v1/score", json=body, headers=bearer(keys, "tenant_a")).json()
    poison = {**honest, "chosen": honest["rejected"], "rejected": honest["chosen"]}
    ids = [
        server.post("/v1/feedback", json=poison, headers=bearer(keys, "tenant_a_bot")).json()["id"]
        for _ in range(6)
    ]
    poisoned = server.post("/v1/score", json=body, headers=bearer(keys, "tenant_a")).json()
    assert margin(poisoned) > margin(before)  # the bot's rows moved the user's reward

    bot = keys["tenant_a_bot"][1].id
    admin = bearer(keys, "admin")
    listed = server.get(f"/v1/admin/keys/{bot}/feedback", headers=admin).json()
    assert [r["id"] for r in listed["rows"]] == ids and listed["next_from_id"] is None
    assert {r["user_id"] for r in listed["rows"]} == {user}
    page = server.get(f"/v1/admin/keys/{bot}/feedback?limit=4", headers=admin).json()
    assert [r["id"] for r in page["rows"]] == ids[:4] and page["next_from_id"] == ids[3] + 1
    deleted = server.delete(f"/v1/admin/keys/{bot}/feedback", headers=admin).json()
    assert deleted == {"key_id": bot, "deleted": 6, "users": {user: 6}}

    after = server.post("/v1/score", json=body, headers=bearer(keys, "tenant_a")).json()
    assert after["history_used"] == before["history_used"] == 1  # the honest row stays
    assert after["scores"] == pytest.approx(before["scores"])
    honest_rows = server.get(f"/v1/admin/keys/{keys['tenant_a'][1].id}/feedback", headers=admin)
    assert user in {r["user_id"] for r in honest_rows.json()["rows"]}
