"""The ``class2d`` console command: what pyproject.toml installs exists and runs the workflow."""

from __future__ import annotations

import importlib
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())


def class2d(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """The command as installed: ``class2d ARGS`` is ``class2d.cli:main`` with ARGS."""
    module, function = PYPROJECT["project"]["scripts"]["class2d"].split(":")
    code = f"import sys, {module}; sys.exit({module}.{function}())"
    return subprocess.run([sys.executable, "-c", code, *args], cwd=cwd, capture_output=True,
                          text=True, timeout=300)


def test_the_console_script_points_at_a_function():
    module, function = PYPROJECT["project"]["scripts"]["class2d"].split(":")
    assert callable(getattr(importlib.import_module(module), function))


def test_version_and_snakefile(tmp_path):
    version = class2d("--version", cwd=tmp_path)
    want = f"class2d {PYPROJECT['project']['version']}\n"
    assert (version.returncode, version.stdout) == (0, want)
    where = class2d("snakefile", cwd=tmp_path)
    assert where.returncode == 0 and Path(where.stdout.strip()) == REPO / "Snakefile"


@pytest.mark.slow
def test_run_plans_the_workflow_from_another_directory(tmp_path):
    """A dry run from an empty directory plans every stage under its own outdir, writes
    nothing; a bad key comes back as Snakemake's non-zero exit status."""
    plan = class2d("run", "-n", "--config", "outdir=elsewhere", cwd=tmp_path)
    assert plan.returncode == 0, plan.stderr[-3000:]
    said = plan.stdout + plan.stderr
    for rule in ("simulate_demo", "prepare_shard", "classify_full_shard", "export_classes",
                 "remove_duplicates", "select_classes", "rebalance_classes", "export_templates"):
        assert f"rule {rule}:" in said, rule
    assert "elsewhere/templates/templates.star" in said
    assert sorted(p.name for p in tmp_path.iterdir()) in ([], [".snakemake"])
    bad = class2d("run", "-n", "--config", "no_such_key=1", cwd=tmp_path)
    assert bad.returncode != 0 and "no_such_key" in bad.stdout + bad.stderr
