"""The shipped `serve deploy` config is valid for Ray Serve and for our application."""

from pathlib import Path

import yaml
from ray.serve.schema import ServeDeploySchema

from personal_rm.methods import MethodsConfig
from serve_app.config import ServeAppConfig

CONFIG = Path(__file__).resolve().parents[1] / "serve_app" / "serve_config.yaml"


def test_serve_deploy_config_validates():
    schema = ServeDeploySchema.model_validate(yaml.safe_load(CONFIG.read_text()))
    (app,) = schema.applications
    assert app.import_path == "serve_app.app:build_app"
    config = ServeAppConfig(**app.args)
    assert config.samplers.max_replicas >= config.samplers.min_replicas >= 1
    # Requests default to the state's scaling, built from the one methods config.
    assert "scaling" not in app.args and MethodsConfig().scaling.alpha == "adaptive"
