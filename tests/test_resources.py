"""What every rule asks a scheduler for: threads, mem_mb and runtime, and gpu for the GPU rules
(a per-node resource); the values come from the config."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]

#: the rules whose jobs run the E-step (they take a backend, so a GPU unless backend: cpu)
GPU_RULES = {"init_classes", "classify_iteration", "classify_full_shard"}
#: a grown input's live round (class2d.live) classifies too; a batch run never plans it
LIVE_GPU_RULES = {"classify_live_round"}


def rule_blocks() -> dict[str, str]:
    """rule name → its text, from rules/*.smk."""
    blocks = {}
    for path in sorted((REPO / "rules").glob("*.smk")):
        parts = re.split(r"^rule (\w+):\n", path.read_text(), flags=re.MULTILINE)
        blocks.update(zip(parts[1::2], parts[2::2]))
    return blocks


def test_every_rule_declares_threads_memory_and_runtime():
    blocks = rule_blocks()
    assert len(blocks) >= 13
    for name, text in blocks.items():
        assert re.search(r"^    threads: ", text, re.MULTILINE), name
        assert "mem_mb=MEM_MB" in text and "runtime=RUNTIME[" in text, name
        assert ("gpu=" in text) == (name in GPU_RULES | LIVE_GPU_RULES), name
        assert "slurm_partition" not in text and "slurm_account" not in text, name
    snakefile = (REPO / "Snakefile").read_text()
    assert re.search(r"^resource_scopes:\n    gpu=\"local\",$", snakefile, re.MULTILINE)


def planned_resources(tmp_path: Path, config: dict) -> dict[str, set[str]]:
    """rule → the set of its jobs' ``resources:`` lines in a dry run of ``config``."""
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    run = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--snakefile",
                          str(REPO / "Snakefile"), "--configfile", str(path)], cwd=tmp_path,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    said = run.stdout + run.stderr
    plan: dict[str, set[str]] = {}
    for rule, block in re.findall(r"^(?:local)?rule (\w+):\n(.*?)(?=^\S|\Z)", said,
                                  re.MULTILINE | re.DOTALL):
        found = re.search(r"resources: (.*)", block)
        plan.setdefault(rule, set()).add(found.group(1) if found else "")
    return plan


@pytest.mark.slow
@pytest.mark.parametrize("backend,gpus", [("cpu", "0"), ("cuda", "1")])
def test_planned_jobs_carry_the_configured_resources(tmp_path, backend, gpus):
    plan = planned_resources(tmp_path, {"backend": backend, "memory_gb": 3,
                                        "prepare": {"shards": 2},
                                        "classify": {"iterations_per_job": 10}})
    assert set(plan) >= GPU_RULES | {"prepare_shard", "export_templates", "all"}
    for rule, lines in plan.items():
        if rule == "all":
            continue
        for line in lines:
            values = dict(item.split("=", 1) for item in line.split(", "))
            assert values["mem_mb"] == "3000", (rule, line)
            assert int(values["runtime"]) >= 30, (rule, line)
            assert values.get("gpu") == (gpus if rule in GPU_RULES else None), (rule, line)
