"""Discovery smoke test: a fresh FiftyOne process finds the plugin and its operators,
registers them without errors, and does not import torch to list them."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from fresh_process import probe_json

PLUGIN_URI = "@cliprnn/clip-as-rnn"

pytestmark = pytest.mark.fiftyone

_PROBE = """
import json, sys
import fiftyone.operators as foo
import fiftyone.plugins as fop
from fiftyone.plugins.context import build_plugin_contexts

plugins = [p.name for p in fop.list_plugins()]
ops = sorted(o.uri for o in foo.list_operators(builtin=False))
errors = [e for c in build_plugin_contexts() for e in c.errors]
print(json.dumps(dict(plugins=plugins, ops=ops, errors=errors,
                      torch="torch" in sys.modules, transformers="transformers" in sys.modules)))
"""


def test_plugin_and_operators_are_discovered_without_errors(plugins_dir) -> None:
    env = {**os.environ, "FIFTYONE_PLUGINS_DIR": str(plugins_dir)}
    got = probe_json(_PROBE, env=env, timeout=120)
    assert got["plugins"] == [PLUGIN_URI]
    assert got["ops"] == [
        f"{PLUGIN_URI}/{n}"
        for n in (
            "apply_mask_edits",
            "calibrate",
            "check_field",
            "edit_mask_classes",
            "exemplar_sets",
            "resume_run",
            "scheduled_runs",
            "segment",
            "segment_shard",
        )
    ]
    assert got["errors"] == []
    assert not got["torch"] and not got["transformers"]


def test_cli_lists_the_plugin(plugins_dir) -> None:
    env = {**os.environ, "FIFTYONE_PLUGINS_DIR": str(plugins_dir)}
    fiftyone_cli = os.path.join(os.path.dirname(sys.executable), "fiftyone")
    out = subprocess.run(
        [fiftyone_cli, "operators", "list", "--names-only"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    listing = out.stdout.split(f"{PLUGIN_URI}\n", 1)[1].split()
    assert listing[:3] == ["segment", "apply_mask_edits", "edit_mask_classes"]


def test_plugin_requirements_install_the_library_from_the_plugin_url(plugins_dir) -> None:
    from importlib import metadata

    import fiftyone.plugins as fop
    import yaml
    from packaging.requirements import Requirement

    lines = fop.load_plugin_requirements(PLUGIN_URI)
    assert lines, "requirements.txt not found next to fiftyone.yml"
    # FiftyOne hands each line to `pip install` from the user's folder: no options, no paths
    reqs = [Requirement(line) for line in lines]
    assert [r.name for r in reqs] == ["cliprnn"]
    meta = yaml.safe_load((plugins_dir / "clip-as-rnn" / "fiftyone.yml").read_text())
    assert reqs[0].url == f"git+{meta['url']}"
    try:  # where `pip install -e .` ran (make install), `... requirements --ensure` passes
        metadata.version("cliprnn")
    except metadata.PackageNotFoundError:
        return
    fop.ensure_plugin_requirements(PLUGIN_URI, error_level=0)
