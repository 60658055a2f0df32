"""Settings: one default per key, bad settings as one line, derived values asked of the package."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from class2d import layout
from class2d.em.params import TOP_LEVEL_KEYS, WORKFLOW_KEYS, ClassifyParams
from class2d.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


def load(name: str) -> dict:
    return yaml.safe_load((REPO / "config" / name).read_text())


def test_every_schema_default_is_the_config_value_and_the_params_default():
    schema, config = load("schema.yaml")["properties"], load("config.yaml")
    assert set(schema) == set(config)
    for key, spec in schema.items():
        if spec["type"] != "object":
            assert spec["default"] == config[key], key
            continue
        assert set(spec["properties"]) == set(config[key]), key
        for sub, sub_spec in spec["properties"].items():
            assert sub_spec["default"] == config[key][sub], f"{key}.{sub}"
    params = {f.name: f.default for f in dataclasses.fields(ClassifyParams)}
    assert params.pop("seed") == config["seed"]
    for key in TOP_LEVEL_KEYS:                                  # top-level, passed along
        assert params.pop(key) == config[key], key
    assert set(params) | WORKFLOW_KEYS == set(config["classify"])
    for key, default in params.items():
        value = config["classify"][key]
        assert value == default and isinstance(value, bool) == isinstance(default, bool), key
    assert ClassifyParams().n_classes == config["classify"]["n_classes"] == 50
    from class2d.prepare import MAX_BAD_FRACTION   # the library's default is the config's
    assert MAX_BAD_FRACTION == config["prepare"]["max_bad_fraction"]
    assert config["prepare"]["bad_particles"] == "skip"


def test_derived_settings():
    assert ClassifyParams(max_res_A=6.0).align_res_A == 6.0            # 0: = max_res_A
    assert ClassifyParams(max_res_A=6.0, max_align_res_A=9.0).align_res_A == 9.0
    assert ClassifyParams(max_res_A=6.0).first_res_A == 25.0            # 4 × 6 Å, at least 25
    assert ClassifyParams(max_res_A=10.0).first_res_A == 40.0


@pytest.mark.parametrize("section, key, problem", [
    ({"n_clases": 20}, "classify.n_clases", "unknown setting"),
    ({"n_classes": 0}, "classify.n_classes", "must be at least 1, got 0"),
    ({"n_classes": 2.5}, "classify.n_classes", "must be an integer, got 2.5"),
    ({"recenter": "yes"}, "classify.recenter", "must be true or false"),
    ({"zeropad": 8}, "classify.zeropad", "must be 1 to 4, got 8"),
    ({"shift_step_A": -1.0}, "classify.shift_step_A", "must be 0 (automatic) or more"),
    ({"max_res_A": 6.0, "min_align_res_A": 4.0}, "classify.min_align_res_A",
     "coarser (larger) than the alignment resolution 6 Å"),
])
def test_a_bad_setting_names_its_key(section, key, problem):
    with pytest.raises(ConfigError) as err:
        ClassifyParams.from_config(section)
    assert err.value.key == key and problem in err.value.problem
    assert "\n" not in str(err.value)


def test_the_workflow_only_key_is_not_a_classification_setting():
    params = ClassifyParams.from_config({"n_classes": 7, "iterations_per_job": 3}, seed=5)
    assert (params.n_classes, params.seed) == (7, 5)


def test_a_bad_setting_reaches_the_user_as_one_line_through_the_runner(tmp_path):
    state = tmp_path / "iter_000" / "state.npz"
    code = ("import sys; from class2d.runner import run_step; from class2d.classify import "
            "init_step; run_step(init_step, sys.argv[1], sys.argv[2], {'n_classes': 0})")
    run = subprocess.run([sys.executable, "-c", code, str(tmp_path / "prepared.yaml"), str(state)],
                         capture_output=True, text=True)
    assert run.returncode == 1
    errors = [line for line in run.stderr.splitlines() if line.startswith("error:")]
    assert errors == ["error: config classify.n_classes: must be at least 1, got 0"], run.stderr
    assert "Traceback" not in run.stderr
    assert not state.exists()


# ---- the prepared box through the real workflow: 192 px at 1.5 Å/px, the default 6 Å

def prepare_through_workflow(tmp_path: Path, extra: dict) -> dict:
    """Run the workflow up to the prepared stack on a small simulated set; its prepared.yaml."""
    outdir = tmp_path / "results"
    config = {"outdir": str(outdir), "demo": {"n_particles": 40, "box": 192, "apix": 1.5},
              **extra}
    configfile = tmp_path / "config.yaml"
    configfile.write_text(yaml.safe_dump(config))
    meta = layout.prepared_meta(str(outdir / "prepare"))
    run = subprocess.run([sys.executable, "-m", "snakemake", "--cores", "1", "--configfile",
                          str(configfile), "--directory", str(REPO), meta],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    return yaml.safe_load(Path(meta).read_text())


@pytest.mark.slow
def test_the_default_config_crops_to_the_alignment_resolution(tmp_path):
    meta = prepare_through_workflow(tmp_path, {})
    # max_align_res_A 0 means max_res_A = 6 Å: Nyquist 2·apix = 6 Å at 96 px of 3 Å
    assert (meta["original_box"], meta["original_apix"]) == (192, 1.5)
    assert (meta["box"], meta["apix"]) == (96, pytest.approx(3.0))


@pytest.mark.slow
def test_a_set_box_wins_over_the_alignment_resolution(tmp_path):
    meta = prepare_through_workflow(tmp_path, {"prepare": {"box_px": 128}})
    assert (meta["box"], meta["apix"]) == (128, pytest.approx(2.25))
