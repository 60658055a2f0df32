"""The bad-input catalogue: every strange file or setting ends the workflow with one line.

Each case makes a small RELION (or CryoSPARC) particle set, spoils one thing, and runs the
real workflow (``snakemake``) up to the first output that the spoilt thing stops: the
prepared stack for input files, the initial classes for settings checked against the
particles, a later stage for its own inputs (run in a copy of a finished small run).  Each
asserts: a non-zero exit; exactly one distinct ``error:`` line, naming the file (or the
config key) and the problem, and no Python traceback; no output of the failing step (and
no temporary file) under ``outdir``; the user's input files unchanged (SHA-256 before and
after).  The odd-but-usable inputs (one image with one class, paths with spaces, relative
paths from another working directory) run instead.  The runs go two at a time.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import mrcfile
import numpy as np
import pandas as pd
import pytest
import starfile
import yaml

from class2d.errors import InputError
from class2d.prepare import prepare_stack
from killing import REPO

#: the small set every case starts from: 16 particles of 32 px at 6 Å/px
N, BOX, APIX = 16, 32, 6.0

#: settings of every case: one shard, two classes, two online iterations in one job
CONFIG = {
    "prepare": {"shards": 1},
    "classify": {"n_classes": 2, "max_res_A": 12.0, "online_iterations": 2, "batch_per_class": 8,
                 "final_full_iterations": 1, "iterations_per_job": 2},
}

#: the output each kind of case runs to (relative to outdir)
TARGETS = {"prepare": "prepare/prepared.yaml", "init": "classify/iter_002/state.npz",
           "export": "classify/particles.star", "dedup": "dedup/particles.star",
           "select": "select/particles.star", "rebalance": "rebalance/particles.star",
           "templates": "templates/templates.star"}


def images(n: int = N, box: int = BOX, seed: int = 0) -> np.ndarray:
    """(n, box, box) float32: a Gaussian blob in unit noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:box, :box] - box / 2
    blob = np.exp(-(xx ** 2 + yy ** 2) / (2 * (box / 8) ** 2)).astype(np.float32)
    return blob + rng.standard_normal((n, box, box)).astype(np.float32)


def write_stack(path: Path, data: np.ndarray, apix: float = APIX) -> None:
    with mrcfile.new(path, overwrite=True) as mrc:
        mrc.set_data(data)
        mrc.set_image_stack()
        mrc.voxel_size = apix


def optics(apix: float = APIX, groups: int = 1) -> pd.DataFrame:
    return pd.DataFrame({"rlnOpticsGroup": np.arange(1, groups + 1),
                         "rlnOpticsGroupName": [f"opticsGroup{g + 1}" for g in range(groups)],
                         "rlnImagePixelSize": apix, "rlnImageSize": BOX, "rlnVoltage": 300.0,
                         "rlnSphericalAberration": 2.7, "rlnAmplitudeContrast": 0.1})


def particles(n: int = N, stack: str = "particles.mrcs") -> pd.DataFrame:
    return pd.DataFrame({"rlnImageName": [f"{i + 1}@{stack}" for i in range(n)],
                         "rlnOpticsGroup": 1,
                         "rlnMicrographName": [f"mic_{i // 4}.mrc" for i in range(n)],
                         "rlnCoordinateX": 100.0 + 300 * (np.arange(n) % 4),
                         "rlnCoordinateY": 200.0,
                         "rlnDefocusU": 15000.0 + 100 * np.arange(n),
                         "rlnDefocusV": 14500.0 + 100 * np.arange(n),
                         "rlnDefocusAngle": 30.0})


def write_set(folder: Path, optics_block=None, particle_block=None, data=None,
              name: str = "particles.star") -> Path:
    """A RELION 3.1 particle set in ``folder``: its STAR path."""
    folder.mkdir(parents=True, exist_ok=True)
    write_stack(folder / "particles.mrcs", images() if data is None else data)
    blocks = {"optics": optics() if optics_block is None else optics_block,
              "particles": particles() if particle_block is None else particle_block}
    star = folder / name
    starfile.write({k: v for k, v in blocks.items() if v is not False}, star)
    return star


def write_cs(folder: Path, drop: str | None = None, retype: str | None = None) -> Path:
    """A CryoSPARC particle .cs beside its stack, without field ``drop`` or with ``retype``
    stored as text."""
    folder.mkdir(parents=True, exist_ok=True)
    write_stack(folder / "particles.mrc", images())
    fields = [("uid", "<u8"), ("blob/path", "S32"), ("blob/idx", "<u4"),
              ("blob/shape", "<u4", (2,)),
              ("blob/psize_A", "<f4"), ("ctf/accel_kv", "<f4"), ("ctf/cs_mm", "<f4"),
              ("ctf/amp_contrast", "<f4"), ("ctf/df1_A", "<f4"), ("ctf/df2_A", "<f4"),
              ("ctf/df_angle_rad", "<f4")]
    fields = [f for f in fields if f[0] != drop]
    fields = [(f[0], "S8") if f[0] == retype else f for f in fields]
    array = np.zeros(N, dtype=fields)
    values = {"uid": np.arange(N) + 1, "blob/path": "particles.mrc", "blob/idx": np.arange(N),
              "blob/shape": BOX, "blob/psize_A": APIX, "ctf/accel_kv": 300, "ctf/cs_mm": 2.7,
              "ctf/amp_contrast": 0.1, "ctf/df1_A": 15000.0, "ctf/df2_A": 14500.0,
              "ctf/df_angle_rad": 0.5}
    for name in array.dtype.names:
        array[name] = b"abc" if name == retype else values[name]
    path = folder / "particles.cs"
    with open(path, "wb") as handle:
        np.save(handle, array)
    return path


@dataclasses.dataclass(frozen=True)
class Case:
    """make(folder) writes the inputs and returns (config overrides, the name the error line
    must hold); ``problem``: a regex the line must match; ``target``: a key of TARGETS;
    ``works``: an odd but usable input, which must run (with ``problem`` in its output:
    the warning it gives)."""

    make: Callable[[Path], tuple[dict, str]]
    problem: str = ""
    target: str = "prepare"
    works: bool = False
    fsize_limit: int | None = None


def star_case(problem: str, target: str = "prepare", config: dict | None = None, **spoil):
    """A case whose only input is a spoilt RELION set (``spoil``: write_set's arguments, or
    ``edit``: a function of the folder run after writing it)."""
    edit = spoil.pop("edit", None)

    def make(folder: Path):
        star = write_set(folder, **spoil)
        if edit:
            edit(folder)
        return {"particles": str(star), **(config or {})}, str(star)
    return Case(make, problem, target)


def config_case(key: str, problem: str, settings: dict, target: str = "prepare"):
    def make(folder: Path):
        star = write_set(folder)
        return {"particles": str(star), **settings}, f"config {key}"
    return Case(make, problem, target)


def with_column(name: str, values) -> pd.DataFrame:
    block = particles()
    block[name] = values
    return block


def garbled_defocus() -> list[str]:
    """rlnDefocusU as starfile writes it, with one token that is not a number (particle 2)."""
    values = [f"{value:g}" for value in 15000.0 + 100 * np.arange(N)]
    values[1] = "15x00"
    return values


def set_mode(mode: int):
    def edit(folder: Path):
        with open(folder / "particles.mrcs", "r+b") as handle:
            handle.seek(12)
            handle.write(np.int32(mode).tobytes())
    return edit


def image_with(value: float, row: int = 5) -> np.ndarray:
    data = images()
    data[row] = value
    return data


def mixed_boxes(folder: Path):
    star = write_set(folder)
    write_stack(folder / "big.mrcs", images(4, BOX + 8))
    block = particles()
    block.loc[12:, "rlnImageName"] = [f"{i + 1}@big.mrcs" for i in range(4)]
    starfile.write({"optics": optics(), "particles": block}, star)
    return {"particles": str(star)}, str(star)


def cs_case(problem: str, **spoil):
    def make(folder: Path):
        path = write_cs(folder, **spoil)
        return {"particles": str(path)}, str(path)
    return Case(make, problem)


def missing_file(folder: Path):
    folder.mkdir(parents=True)
    return {"particles": str(folder / "nowhere.star")}, str(folder / "nowhere.star")


def empty_file(folder: Path):
    folder.mkdir(parents=True)
    (folder / "empty.star").write_text("")
    return {"particles": str(folder / "empty.star")}, str(folder / "empty.star")


def unwritable_outdir(folder: Path):
    star = write_set(folder)
    (folder / "a_file").write_text("not a folder")
    return {"particles": str(star), "outdir": str(folder / "a_file" / "results")}, \
        str(folder / "a_file")


def full_disk(folder: Path):
    star = write_set(folder)
    return {"particles": str(star)}, "prepare/stack_000.mrcs"


def one_image(folder: Path):
    star = write_set(folder, particle_block=particles(1))
    return {"particles": str(star), "classify": {**CONFIG["classify"], "n_classes": 1}}, ""


def spaces(folder: Path):
    star = write_set(folder / "my data")
    return {"particles": str(star), "outdir": str(folder.parent / "my results")}, ""


def beyond_nyquist(folder: Path):
    star = write_set(folder)
    return {"particles": str(star), "classify": {**CONFIG["classify"], "max_res_A": 8.0}}, ""


#: per-particle faults stop the run at the first (the workflow's default skips them)
STOP = {"prepare": {"shards": 1, "bad_particles": "error"}}
#: rows of FEW_BAD's set that are bad, and the reason rejected.star must give each
FEW_BAD_ROWS = {2: "constant_image", 5: "non_finite_pixels", 8: "bad_number:rlnDefocusU",
                11: "index_past_stack"}


def few_bad_particles() -> dict:
    """write_set's arguments for a set with one particle of each per-particle fault."""
    data = image_with(0.0, 2)
    data[5, 3, 4] = np.nan
    block = with_column("rlnDefocusU", [f"{v:g}" for v in 15000.0 + 100 * np.arange(N)])
    block.loc[8, "rlnDefocusU"] = "15x00"
    block.loc[11, "rlnImageName"] = f"{N + 4}@particles.mrcs"
    return {"data": data, "particle_block": block}


FEW_BAD = few_bad_particles()


#: stage cases run in a copy of the small finished run; make(outdir) spoils it
def selection_case(problem: str, text: str, target: str = "select"):
    def make(outdir: Path):
        path = outdir / "select" / "selection.json"
        path.write_text(text)
        return {}, str(path)
    return Case(make, problem, target)


def no_micrographs(outdir: Path):
    path = outdir / "classify" / "particles.star"
    blocks = starfile.read(path, always_dict=True)
    blocks["particles"] = blocks["particles"].drop(columns="rlnMicrographName")
    starfile.write(blocks, path)
    return {}, str(path)


CASES = {
    "missing star": Case(missing_file, "file not found"),
    "empty star": Case(empty_file, "no particle block"),
    "no particles block": star_case("no particle block", particle_block=False),
    "no image column": star_case("no particle block",
                                 particle_block=particles().drop(columns="rlnImageName")),
    "no defocus columns": star_case("no CTF parameters.*rlnDefocusU",
                                    particle_block=particles().drop(columns=["rlnDefocusU",
                                                                             "rlnDefocusV"])),
    "no voltage": star_case("no CTF parameters.*rlnVoltage",
                            optics_block=optics().drop(columns="rlnVoltage")),
    "index beyond stack": star_case(r"stack .*particles.mrcs has 16 images", config=STOP,
                                    particle_block=with_column(
                                        "rlnImageName", [f"{i + 5}@particles.mrcs"
                                                         for i in range(N)])),
    "missing stack": star_case("file not found",
                               edit=lambda f: (f / "particles.mrcs").unlink()),
    "truncated mrc": star_case("truncated", edit=lambda f: os.truncate(f / "particles.mrcs",
                                                                        1024 + 40000)),
    "unsupported mrc mode": star_case("unsupported MRC data mode 9", edit=set_mode(9)),
    "complex mrc mode": star_case("complex MRC data", edit=set_mode(4)),
    "nan image": star_case("image 6@particles.mrcs holds NaN or Inf", config=STOP,
                           data=image_with(np.nan)),
    "inf image": star_case("image 6@particles.mrcs holds NaN or Inf", config=STOP,
                           data=image_with(np.inf)),
    "all-zero image": star_case("image 6@particles.mrcs is constant", config=STOP,
                                data=image_with(0.0)),
    "constant image": star_case("image 6@particles.mrcs is constant", config=STOP,
                                data=image_with(3.5)),
    "mixed box sizes": Case(mixed_boxes, "big.mrcs holds 40 px images, rlnImageSize says 32"),
    "mixed pixel sizes": star_case("mixed pixel sizes", optics_block=pd.concat(
        [optics(), optics(APIX * 1.1).assign(rlnOpticsGroup=2)]),
        particle_block=with_column("rlnOpticsGroup", [1, 2] * (N // 2))),
    "zero pixel size": star_case("pixel size 0.0", optics_block=optics(0.0)),
    "negative pixel size": star_case("pixel size -6.0", optics_block=optics(-6.0)),
    "negative defocus": star_case("negative defocus",
                                  particle_block=with_column("rlnDefocusU", -15000.0)),
    "nan defocus": star_case("no defocus value", config=STOP,
                             particle_block=with_column("rlnDefocusV", np.nan)),
    "garbled defocus": star_case("rlnDefocusU of particle 2 is '15x00', not a number",
                                 config=STOP,
                                 particle_block=with_column("rlnDefocusU", garbled_defocus())),
    # a few bad particles: skipped and listed (bad_particles: skip, the default) …
    "a few bad particles": dataclasses.replace(star_case(
        "left out 4 of 16 particles", "export",
        {"prepare": {"shards": 2, "max_bad_fraction": 0.25}}, **FEW_BAD), works=True),
    # … the first stops the run with bad_particles: error …
    "a few bad particles, error": star_case("rlnDefocusU of particle 9 is '15x00', not a number",
                                            config=STOP, **FEW_BAD),
    # … and more than max_bad_fraction of them (default 0.05) stop it too
    # (the shard that finds them says how many it found: the table's two, before any image)
    "too many bad particles": star_case(
        r"at least 2 of 16 particles are bad \(1 bad_number:rlnDefocusU, 1 index_past_stack\): "
        r"more than prepare.max_bad_fraction 0.05", **FEW_BAD),
    "duplicate image names": star_case("1@particles.mrcs appears 2 times",
                                       particle_block=with_column(
                                           "rlnImageName", ["1@particles.mrcs"] + [
                                               f"{i}@particles.mrcs" for i in range(1, N)])),
    "cs without blob/path": cs_case("no blob/path", drop="blob/path"),
    "cs without pixel size": cs_case("no pixel size", drop="blob/psize_A"),
    "cs wrong dtype": cs_case("field ctf/df1_A has dtype |S8, not numbers", retype="ctf/df1_A"),
    "more classes than particles": config_case("classify.n_classes", "20 classes for 16 particles",
                                               {"classify": {**CONFIG["classify"],
                                                             "n_classes": 20}}, "init"),
    "zero classes": config_case("classify.n_classes", "minimum of 1",
                                {"classify": {**CONFIG["classify"], "n_classes": 0}}),
    # CryoSPARC's default 6 Å is finer than Nyquist for every set binned beyond 3 Å/px
    "resolution beyond nyquist": Case(beyond_nyquist,
                                      "finer than the particles' Nyquist limit 12 Å",
                                      target="export", works=True),
    "particle wider than box": config_case("particle_diameter_A", "wider than the 192 Å box",
                                           {"particle_diameter_A": 400.0}),
    "retired diameter key": config_case("classify.mask_diameter_A", "top-level "
                                        "particle_diameter_A", {"classify": {
                                            **CONFIG["classify"], "mask_diameter_A": 150.0}}),
    "unwritable outdir": Case(unwritable_outdir, "not a folder"),
    "full disk": Case(full_disk, "File too large", fsize_limit=40_000),
    "malformed selection.json": selection_case("not a selection file", "{selected: [1,"),
    "selection of unknown classes": selection_case("class 9 .*not", '{"selected": [1, 9]}'),
    "selection of nothing": selection_case("no class selected", '{"selected": []}', "templates"),
    "dedup without micrographs": Case(no_micrographs, "rlnMicrographName", "dedup"),
    "one image, one class": Case(one_image, target="export", works=True),
    "paths with spaces": Case(spaces, target="prepare", works=True),
}
#: the cases run in a copy of the small finished run: the first stage they redo
STAGE_CASES = {"malformed selection.json": "select", "selection of unknown classes": "select",
               "selection of nothing": "select", "dedup without micrographs": "dedup"}
LATER_STAGES = ("dedup", "select", "rebalance", "templates")


def hashes(files: list[Path]) -> dict[str, str]:
    """SHA-256 of each file (None when it is gone)."""
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() if p.exists() else None
            for p in files}


def file_limit(limit: int):
    """preexec: a file-size limit (RLIMIT_FSIZE) for the run and its jobs, with SIGXFSZ
    ignored so that writing past it fails with EFBIG, as a full disk fails with ENOSPC."""
    def apply():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    return apply


def snakemake(config: dict, target: str, workdir: Path,
              fsize_limit: int | None = None) -> subprocess.CompletedProcess:
    """Run in ``workdir``: Snakemake's lock folder (``.snakemake/locks``) is its working
    directory's, and a run that ends removes it under any other run sharing that directory."""
    path = workdir / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return subprocess.run([sys.executable, "-m", "snakemake", target, "--cores", "1",
                           "--configfile", str(path), "--snakefile", str(REPO / "Snakefile"),
                           "--directory", str(workdir)], capture_output=True,
                          text=True, preexec_fn=file_limit(fsize_limit) if fsize_limit
                          else None)


def run_case(name: str, folder: Path, finished: Path) -> dict:
    case = CASES[name]
    if name in STAGE_CASES:
        outdir = folder / "results"
        redo = LATER_STAGES[LATER_STAGES.index(STAGE_CASES[name]):]
        shutil.copytree(finished, outdir, symlinks=True,
                        ignore=shutil.ignore_patterns("logs", *redo))
        (outdir / "select").mkdir()
        settings, named = case.make(outdir)
        inputs = [Path(named)]
        config = {**yaml.safe_load((finished.parent / f"{finished.name}.yaml").read_text()),
                  "outdir": str(outdir)}
    else:
        settings, named = case.make(folder / "input")
        inputs = [p for p in (folder / "input").rglob("*") if p.is_file()]
        config = {**CONFIG, "outdir": str(folder / "results"), **settings}
        outdir = Path(config["outdir"])
    before, existing = hashes(inputs), outputs(outdir)
    target = os.path.join(config["outdir"], TARGETS[case.target])
    run = snakemake(config, target, folder, case.fsize_limit)
    return {"run": run, "outdir": outdir, "named": named, "before": before,
            "after": hashes(inputs), "target": target, "new": outputs(outdir) - existing}


def outputs(outdir: Path) -> set[str]:
    """Every file under ``outdir`` but the logs, relative to it."""
    return {str(p.relative_to(outdir)) for p in outdir.rglob("*")
            if p.is_file() and p.relative_to(outdir).parts[0] != "logs"}


@pytest.fixture(scope="module")
def catalogue(tmp_path_factory, small_run) -> dict:
    """Every case run, two at a time (CI has two cores)."""
    folder = tmp_path_factory.mktemp("catalogue")
    names = list(CASES)
    with ThreadPoolExecutor(2) as pool:
        results = pool.map(lambda i: run_case(names[i], folder / f"case_{i:02d}", small_run),
                           range(len(names)))
        return dict(zip(names, results))


def test_the_catalogue_is_large_enough():
    assert len([c for c in CASES.values() if not c.works]) >= 30


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_one_line_and_leaves_nothing(catalogue, name):
    case, result = CASES[name], catalogue[name]
    run = result["run"]
    output = run.stdout + run.stderr
    if case.works:
        assert run.returncode == 0, output[-3000:]
        assert Path(result["target"]).is_file()
        assert re.search(case.problem, output), output[-3000:]
        assert result["after"] == result["before"]
        return
    assert run.returncode != 0, output[-3000:]
    errors = sorted({line for line in output.splitlines() if line.startswith("error: ")})
    assert len(errors) == 1, output[-3000:]
    assert result["named"] in errors[0], errors[0]
    assert re.search(case.problem, errors[0]), errors[0]
    assert "Traceback" not in output, output[-3000:]
    # nothing new but the logs, and (for a setting checked at the initial classes) the
    # prepared stack, a whole output of the step before
    assert [p for p in result["new"]
            if not (case.target == "init" and p.startswith("prepare/"))] == []
    assert result["after"] == result["before"], "the input files changed"


@pytest.mark.slow
def test_a_few_bad_particles_are_listed_with_their_reasons_and_nowhere_else(catalogue):
    """The run that skipped them: rejected.star and .cs list exactly the bad particles, in
    input order, each with its reason; the classified particles are the other 12."""
    outdir = catalogue["a few bad particles"]["outdir"]
    rejected = starfile.read(outdir / "prepare" / "rejected.star", always_dict=True)["particles"]
    numbers = [int(name.split("@")[0]) for name in rejected["rlnImageName"]]
    assert numbers == [3, 6, 9, N + 4]
    assert rejected["c2dRejectReason"].tolist() == list(FEW_BAD_ROWS.values())
    cs = np.load(outdir / "prepare" / "rejected.cs")
    assert [r.decode() for r in cs["class2d/reject_reason"]] == list(FEW_BAD_ROWS.values())
    classified = starfile.read(outdir / "classify" / "particles.star",
                               always_dict=True)["particles"]
    assert [int(name.split("@")[0]) for name in classified["rlnImageName"]] == [
        row + 1 for row in range(N) if row not in FEW_BAD_ROWS]


@pytest.mark.filterwarnings("ignore:The 'future.infer_string' option is deprecated")
@pytest.mark.parametrize("strings", ["object", "pyarrow"])
def test_a_garbled_number_is_one_line_whatever_pandas_stores_text_in(tmp_path, strings):
    """starfile leaves a numeric column holding one bad token as text: NumPy objects, or
    pandas' str on pyarrow (pandas 3's default where pyarrow is installed; the catalogue
    runs the workflow under whichever this environment has). Preparation ends with the
    same one-line InputError under both."""
    try:
        pd.get_option("future.infer_string")
    except pd.errors.OptionError:
        pytest.skip(f"pandas {pd.__version__} has no future.infer_string option")
    if strings == "pyarrow":
        pytest.importorskip("pyarrow", reason="pyarrow-backed strings need pyarrow")
    star = write_set(tmp_path / "input", particle_block=with_column("rlnDefocusU",
                                                                    garbled_defocus()))
    with pd.option_context("future.infer_string", strings == "pyarrow"):
        column = starfile.read(star)["particles"]["rlnDefocusU"]
        assert (column.dtype == object) if strings == "object" else (
            column.dtype.storage == "pyarrow"), column.dtype
        with pytest.raises(InputError) as err:
            prepare_stack(star, tmp_path / "prepare", bad_particles="error")
    assert str(err.value) == f"{star}: rlnDefocusU of particle 2 is '15x00', not a number"


@pytest.mark.slow
def test_relative_paths_from_another_working_directory(tmp_path):
    """``snakemake -s /path/to/Snakefile`` started in the user's project folder: the
    config's relative paths are the user's (their images' too, relative to the STAR)."""
    star = write_set(tmp_path / "project" / "data")
    before = hashes(list(star.parent.iterdir()))
    (tmp_path / "project" / "config.yaml").write_text(yaml.safe_dump(
        {**CONFIG, "particles": "data/particles.star", "outdir": "results"}))
    run = subprocess.run([sys.executable, "-m", "snakemake", "results/" + TARGETS["prepare"],
                          "-s", str(REPO / "Snakefile"), "--cores", "1", "--configfile",
                          "config.yaml"], capture_output=True, text=True,
                         cwd=tmp_path / "project")
    assert run.returncode == 0, (run.stdout + run.stderr)[-3000:]
    with mrcfile.open(tmp_path / "project" / "results" / "prepare" / "stack_000.mrcs") as mrc:
        assert mrc.data.shape == (N, BOX, BOX)
    assert hashes(list(star.parent.iterdir())) == before
