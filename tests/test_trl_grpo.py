"""TRL's GRPOTrainer, for a few CPU steps, rewarded by our live Serve app (`bench.trl_grpo`)."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.ray


def test_grpo_trains_on_rewards_that_all_come_from_the_server(ray_session, small_state, tmp_path):
    from ray import serve

    from bench.service import start
    from bench.trl_grpo import TRLGRPOConfig, grpo_run, summarize

    from serve_helpers import on_small_state

    base = on_small_state(small_state, tmp_path).model_dump()
    config = TRLGRPOConfig.model_validate({**base, "steps": 2})
    try:
        report = summarize(grpo_run(config, start(config), tmp_path), config)
    finally:
        serve.shutdown()
    batch = report["completions_per_step"]
    assert batch == 2 * 2 * 4  # users x prompts each x G
    assert [s["rewards"] for s in report["steps"]] == [batch, batch]  # served, by the server
    for step in report["steps"]:  # TRL logged exactly what the server returned that step
        assert step["trl_mean"] == pytest.approx(step["server_mean"], rel=1e-5, abs=1e-6)
        assert step["trl_std"] > 0  # completions differ, so GRPO has advantages to learn from
    for row in report["last_step"]:
        assert row["trl_reward"] == pytest.approx(row["rescored"], rel=1e-5, abs=1e-6)
    assert report["server_total"]["rewards"] == 2 * batch
    assert report["weights"]["changed"] > 0 and report["weights"]["max_abs_change"] > 0
    assert all(report["checks"].values()), report["checks"]
