"""The Ray Serve config file that docs/serving.md gives for a cluster: Ray Serve's own schema takes
it, and its ``import_path`` builds the application from its ``args``."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

pytest.importorskip("ray", reason="needs Ray: pip install 'svdtrt[serve]'")
yaml = pytest.importorskip("yaml")

DOC = Path(__file__).parents[2] / "docs" / "serving.md"


def _config() -> dict:
    text = DOC.read_text()
    block = re.search(r"<!-- serve-config[^>]*-->\n```yaml\n(.*?)```", text, re.S)
    assert block, "docs/serving.md lost its serve-config block"
    return yaml.safe_load(block.group(1))


def test_the_documented_config_is_a_valid_serve_config_whose_builder_builds(tiny_bundle):
    from ray import serve
    from ray.serve.schema import ServeDeploySchema

    from svdtrt.serving import app

    config = ServeDeploySchema.model_validate(_config()) if hasattr(ServeDeploySchema, "model_validate") \
        else ServeDeploySchema.parse_obj(_config())
    [application] = config.applications
    module, _, name = application.import_path.partition(":")
    assert module == app.__name__ and getattr(app, name) is app.app_builder
    args = {**application.args, "bundle": str(tiny_bundle.path), "backend": "onnxruntime", "precision": "fp32"}
    built = app.app_builder(args)
    assert isinstance(built, serve.Application)


def test_the_builder_refuses_unknown_and_missing_args(tiny_bundle):
    from svdtrt.errors import InputError
    from svdtrt.serving.app import app_builder

    with pytest.raises(InputError, match="unknown application args replica"):
        app_builder({"bundle": str(tiny_bundle.path), "replica": 2})
    with pytest.raises(InputError, match="need 'bundle'"):
        app_builder({"replicas": 2})
