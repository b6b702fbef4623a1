"""The README's main command, in its quick configuration, end to end on real data."""

import json

import pytest

from jobs.pipeline import STAGES, main
from personal_rm.serving.state import ROUTER_FILE

pytestmark = pytest.mark.ray


def test_quick_pipeline_runs_every_stage_and_caches(ray_session, tmp_path, capsys):
    out = tmp_path / "pipeline"
    argv = [
        "--quick",
        "true",
        "--out",
        str(out),
        "--cache_dir",
        str(tmp_path / "cache"),
        "--port",
        "8151",
    ]
    main(argv)
    printed = capsys.readouterr().out
    rows = json.loads((out / "accuracy.json").read_text())["rows"]
    assert {r["method"] for r in rows} == {
        "bt_global",
        "bt_user",
        "lowrank",
        "mrm",
        "rubric",
        "rubric_tts",
    }
    assert set(json.loads((out / "timings.json").read_text())) == set(STAGES)
    assert (out / "state" / ROUTER_FILE).exists() and (out / "accuracy.png").exists()
    assert "scores after feedback" in printed and "| rubric_tts |" in printed
    before = {f: (out / f / "rows.json").stat().st_mtime for f in ("baselines", "mrm")}
    main([*argv, "--force", "prototypes"])
    assert {f: (out / f / "rows.json").stat().st_mtime for f in before} == before  # cached
