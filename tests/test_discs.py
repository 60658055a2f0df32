"""One particle diameter: every stage's circle from it, the defaults those of before."""

from __future__ import annotations

from pathlib import Path

import jsonschema
import pytest
import yaml

from class2d import discs
from class2d.em.params import ClassifyParams
from class2d.errors import ConfigError, schema_problem

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("box", [16, 24, 32, 38, 40, 48, 64, 86, 96, 100, 128, 192, 256, 320])
def test_defaults_are_the_box_fractions_each_stage_used(box):
    # before one diameter: prepare 0.75 · box / 2, classify min(0.9 · box / 2, box / 2 −
    # max(2, 0.05 · box)), select 0.35 · box; equal to the last bit (the pixels on a circle
    # at a whole radius must fall on the same side)
    apix = 1.7
    edge = max(2.0, 0.05 * box)
    assert discs.normalisation_radius_px(box, apix) == 0.75 * box / 2
    assert discs.mask_radius_px(box, apix) == (min(0.9 * box / 2, box / 2 - edge), edge)
    assert discs.particle_radius_px(box, apix) == 0.35 * box


def test_a_given_diameter_sets_every_circle():
    # 140 Å at 2 Å/px in 128 px: particle 70 px, normalisation 75 px, mask 90 px across
    assert discs.particle_radius_px(128, 2.0, 140.0) == pytest.approx(35.0)
    assert discs.normalisation_radius_px(128, 2.0, 140.0) == pytest.approx(37.5)
    assert discs.mask_radius_px(128, 2.0, 140.0) == pytest.approx((45.0, 6.4))
    assert discs.mask_radius_px(128, 2.0, 140.0, edge_A=4.0) == pytest.approx((45.0, 2.0))
    assert discs.mask_diameter_A(140.0) == pytest.approx(180.0)
    # 210 Å: the 270 Å mask is cut to the 256 Å box less the 6.4 px edge
    assert discs.mask_radius_px(128, 2.0, 210.0) == pytest.approx((57.6, 6.4))
    # the classifier asks the same place
    params = ClassifyParams(particle_diameter_A=140.0)
    assert params.mask_radius_px(128, 2.0) == discs.mask_radius_px(128, 2.0, 140.0)
    assert params.mask_diameter_px(128, 2.0) == pytest.approx(90.0)


def test_a_particle_wider_than_the_box_names_the_key():
    discs.check_diameter(256.0, 128, 2.0)
    with pytest.raises(ConfigError) as err:
        discs.check_diameter(257.0, 128, 2.0)
    assert str(err.value) == "config particle_diameter_A: 257 Å is wider than the 256 Å box"
    with pytest.raises(ConfigError, match="particle_diameter_A"):
        ClassifyParams(particle_diameter_A=300.0).check_particles(100, 128, 2.0)


def test_a_bad_diameter_names_the_top_level_key():
    with pytest.raises(ConfigError) as err:
        ClassifyParams.from_config({"particle_diameter_A": -1.0})
    assert err.value.key == "particle_diameter_A"


def _schema_error(config: dict) -> str:
    schema = yaml.safe_load((REPO / "config" / "schema.yaml").read_text())
    error = next(jsonschema.Draft202012Validator(schema).iter_errors(config))
    return schema_problem(error)


@pytest.mark.parametrize("section, key", [
    ("prepare", "diameter_A"), ("classify", "mask_diameter_A"),
    ("classify", "particle_diameter_A"), ("select", "particle_diameter_A")])
def test_a_retired_diameter_key_names_its_replacement(section, key):
    line = _schema_error({section: {key: 150.0}})
    assert line.startswith(f"config {section}.{key}: no longer a setting")
    assert "top-level particle_diameter_A" in line and "\n" not in line
    # the package's own check of the classify section says the same
    if section == "classify" and key == "mask_diameter_A":
        with pytest.raises(ConfigError) as err:
            ClassifyParams.from_config({key: 150.0})
        assert str(err.value) == line


def test_another_unknown_key_keeps_the_schema_message():
    assert _schema_error({"classify": {"n_clases": 3}}) == (
        "config classify: Additional properties are not allowed ('n_clases' was unexpected)")


def test_the_top_level_diameter_is_a_setting():
    schema = yaml.safe_load((REPO / "config" / "schema.yaml").read_text())
    validator = jsonschema.Draft202012Validator(schema)
    assert not list(validator.iter_errors({"particle_diameter_A": 150.0}))
    assert _schema_error({"particle_diameter_A": -1.0}).startswith("config particle_diameter_A:")
