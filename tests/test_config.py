import subprocess
import sys

import pytest
from pydantic import ValidationError

from jobs.evaluate import EvaluateConfig
from personal_rm.config import Config, load_config, override, parse_config

JOBS = [
    "jobs.evaluate",
    "jobs.meta_train_mrm",
    "jobs.serve",
    "jobs.pipeline",
    "jobs.build_chains",
    "jobs.train_genrm",
    "jobs.genrm_pipeline",
    "jobs.score_genrm",
    "jobs.sweep",
    "jobs.embed",
    "jobs.build_tasks",
    "jobs.fit_prototypes",
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


class Inner(Config):
    a: int = 1
    b: int = 2


class Outer(Config):
    inner: Inner = Inner(a=10)  # a field default that is not its class's default


def test_a_partial_section_is_laid_onto_its_fields_default_not_its_classes():
    """The bug: `{"inner": {"b": 5}}` used to rebuild `inner` from Inner's defaults (a=1)."""
    assert load_config(Outer, {"inner": {"b": 5}}).inner == Inner(a=10, b=5)
    assert Outer(inner={"b": 5}).inner == Inner(a=10, b=5)  # the Python constructor too
    assert override(Outer(), {"inner.b": 7}).inner == Inner(a=10, b=7)


def test_a_nested_flag_changes_only_its_own_key():
    """`jobs.pipeline --scaling.n 16` used to reset the pipeline's alpha to the class default."""
    from jobs.pipeline import PipelineConfig

    config = parse_config(PipelineConfig, ["--scaling.n", "16", "--mrm.epochs", "3"])
    assert config.scaling == PipelineConfig().scaling.model_copy(update={"n": 16})
    assert config.mrm == PipelineConfig().mrm.model_copy(update={"epochs": 3})


def test_the_quick_preset_goes_under_explicit_flags():
    from jobs.pipeline import PipelineConfig, quick_preset

    argv = ["--quick", "true", "--scaling.m", "3"]
    config = parse_config(PipelineConfig, argv, preset=quick_preset)
    assert config.max_users == 40 and config.scaling.n == 4  # from the quick file
    assert config.scaling.m == 3  # the flag wins
    assert config.scaling.alpha == PipelineConfig().scaling.alpha  # untouched by either


def test_a_backend_field_that_its_kind_does_not_use_is_an_error():
    from serve_app.deploy import ServeJobConfig

    vllm = ["--app.genrm.backend.kind", "vllm", "--app.genrm.backend.tensor_parallel_size", "2"]
    assert parse_config(ServeJobConfig, vllm).app.genrm.backend.tensor_parallel_size == 2
    with pytest.raises(SystemExit):  # batch_size is a transformers setting
        parse_config(ServeJobConfig, [*vllm, "--app.genrm.backend.batch_size", "4"])
    with pytest.raises(ValidationError, match="device"):
        openai = {"kind": "openai", "device": "cuda"}
        load_config(ServeJobConfig, {"app": {"genrm": {"backend": openai}}})


def test_another_backend_kind_starts_from_its_own_defaults_not_the_default_backends():
    """A section whose default is one kind (the evaluate job's `genrm`: transformers on
    smollm2-135m) switched to another kind by a flag keeps none of the first kind's fields."""
    from jobs.evaluate import EvaluateConfig

    assert EvaluateConfig().genrm.backend.model == "smollm2-135m"
    config = parse_config(EvaluateConfig, ["--genrm.backend.kind", "heuristic"])
    assert config.genrm.backend.kind == "heuristic" and config.genrm.n == 1
    vllm = parse_config(EvaluateConfig, ["--genrm.backend.kind", "vllm"]).genrm.backend
    assert vllm.kind == "vllm" and vllm.model == ""  # vllm's own default, not transformers'


def test_every_config_knob_reaches_the_model_it_configures():
    """No accepted-but-ignored flag: the rubric judge's training section has no knob that the
    judge overwrites (it used to accept num_bases, head, hidden, init and init_noise, then ignore
    them)."""
    from personal_rm.pgenrm.rubric import RubricTrainingConfig

    ignored = {"num_bases", "head", "hidden", "init", "init_noise"}
    assert not ignored & set(RubricTrainingConfig.model_fields)
