"""cluster.yaml is a valid Ray autoscaler config with the node types the jobs expect."""

from pathlib import Path

import yaml
from ray.autoscaler._private.util import fillout_defaults, validate_config

CLUSTER = Path(__file__).resolve().parents[1] / "cluster.yaml"


def test_cluster_yaml_passes_ray_validation():
    config = yaml.safe_load(CLUSTER.read_text())
    validate_config(fillout_defaults(config))
    types = config["available_node_types"]
    assert types[config["head_node_type"]]["resources"]["CPU"] == 0
    gpu = types["gpu_worker"]
    assert gpu["resources"]["GPU"] >= 1 and gpu["max_workers"] >= gpu["min_workers"]


def test_cluster_installs_our_pinned_stack():
    config = yaml.safe_load(CLUSTER.read_text())
    import ray

    assert config["docker"]["image"].startswith(f"rayproject/ray:{ray.__version__}-")
    setup = config["setup_commands"]
    assert setup[0] == "pip install torch==2.13.0"
    assert any("[gpu]" in command for command in setup)


def test_a_misspelt_key_is_rejected():
    import jsonschema
    import pytest

    config = yaml.safe_load(CLUSTER.read_text())
    worker = config["available_node_types"]["gpu_worker"]
    worker["resourcez"] = worker.pop("resources")
    with pytest.raises(jsonschema.ValidationError, match="resources"):
        validate_config(fillout_defaults(config))
