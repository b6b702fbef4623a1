import subprocess
import sys

import pytest
from pydantic import ValidationError

from jobs.evaluate import EvaluateConfig
from personal_rm.config import load_config, parse_config

JOBS = [
    "jobs.evaluate",
    "jobs.meta_train_mrm",
    "jobs.serve",
    "jobs.pipeline",
    "jobs.build_chains",
    "jobs.train_genrm",
    "jobs.score_genrm",
    "jobs.sweep",
]


def test_yaml_then_flags_override_defaults(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("seed: 3\nk: [0, 2]\nsplit:\n  unseen_fraction: 0.3\n")
    config = parse_config(
        EvaluateConfig, ["--config", str(path), "--k", "4,all", "--split.test_fraction", "0.25"]
    )
    assert config.seed == 3
    assert config.k == [4, "all"]
    assert config.split.unseen_fraction == 0.3 and config.split.test_fraction == 0.25


def test_unknown_keys_are_rejected(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("sed: 3\n")
    with pytest.raises(ValidationError, match="sed"):
        load_config(EvaluateConfig, path)
    with pytest.raises(SystemExit):
        parse_config(EvaluateConfig, ["--k", "4,minus-one"])


@pytest.mark.parametrize("job", JOBS)
def test_every_job_has_help(job):
    result = subprocess.run(
        [sys.executable, "-m", job, "--help"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert "--config" in result.stdout


def test_an_optional_section_is_off_until_one_of_its_flags_is_given():
    from serve_app.deploy import ServeJobConfig

    assert parse_config(ServeJobConfig, []).app.genrm is None
    config = parse_config(ServeJobConfig, ["--app.genrm.backend.model", "/models/judge"])
    assert config.app.genrm.backend.model == "/models/judge"
    assert config.app.genrm.backend.kind == "transformers"  # the rest of the section: defaults
