"""The repository layout the user asked for, and one install that serves all."""

from __future__ import annotations

import importlib
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SERVICES = ("ingest", "superres", "labeler", "trainer", "publisher", "controller")


def test_top_level_names():
    for name in ("services", "shared", "edge-image", "charts", "docker", "tests", "README.md", "pyproject.toml", ".ci/run"):
        assert (REPO / name).exists(), name
    for service in SERVICES:
        assert (REPO / "services" / service / "__init__.py").exists(), service


@pytest.mark.parametrize("module", ["cloudtutor", "cloudtutor_edge", *(f"cloudtutor_services.{s}" for s in SERVICES)])
def test_everything_imports_from_one_install(module):
    importlib.import_module(module)


def test_packaged_list_matches_the_folders():
    cfg = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    roots = {name: REPO / path for name, path in cfg["package-dir"].items()}
    found = set()
    for name, root in roots.items():
        for init in root.rglob("__init__.py"):
            rel = init.parent.relative_to(root)
            found.add(".".join((name, *rel.parts)) if rel.parts else name)
    assert found == set(cfg["packages"])


def test_console_script_runs():
    exe = shutil.which("cloudtutor") or str(Path(__import__("sys").executable).parent / "cloudtutor")
    proc = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.startswith("cloudtutor ")


def test_edge_side_modules_do_not_need_redis_or_tflite():
    # The edge image installs neither (brief §10.12).
    code = (
        "import sys; sys.modules['redis'] = None; sys.modules['ai_edge_litert'] = None\n"
        "import cloudtutor.envelope, cloudtutor.topics, cloudtutor.messages, cloudtutor.knobs, "
        "cloudtutor.config.edge, cloudtutor.bus, cloudtutor_edge"
    )
    proc = subprocess.run([__import__("sys").executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
