"""Where the files of a run live: each name pattern spelled once, for the rules and the package.

    >>> from class2d import layout
    >>> layout.stack_path("results/prepare", 0)
    'results/prepare/stack_000.mrcs'
    >>> layout.state_path("results/classify", 3)
    'results/classify/iter_003/state.npz'
    >>> layout.state_path("results/classify", "{n}")        # a Snakemake wildcard pattern
    'results/classify/iter_{n}/state.npz'

Iterations and shards are numbered with three digits; a number given as a string (a
wildcard such as ``"{n}"``) is put in as it is, so the rules build their patterns here too.
"""

from __future__ import annotations

import os

from class2d.errors import ConfigError

#: the prepared folder's description (boxes, pixel sizes, shard row ranges)
PREPARED_META = "prepared.yaml"
#: the prepared folder's copy of the input particle table
PREPARED_PARTICLES = "particles.star"
#: the prepared particles' CTF parameters as arrays (``ctf.CTFParams``), read by every pass
PREPARED_CTF = "ctf.npz"
#: the particles preparation left out (``class2d.faults``), ``.star`` and ``.cs``
REJECTED = "rejected"
#: an iteration's model state (``em.state.ClassState``)
STATE = "state.npz"
#: a full pass's per-particle results (class, pose, posterior, …)
ASSIGNMENTS = "assignments.npz"
#: the classify settings the run's states were made with (``classify.Classification``)
SETTINGS = "settings.json"
#: which input rows the prepared shards hold, and a digest of them (``live.plan_shards``)
PREPARED_ROWS = "rows.json"
#: the input's row hashes, kept with its size and time so a run need not read it again
ROW_HASHES = "row_hashes.npz"
#: the classify folder's copy of the exported state and what it covers (``live.remember``)
LIVE = "live"
#: a live round's record (round number, particles at the last full iteration)
ROUND_INFO = "round.json"


def number(n: int | str) -> str:
    """``7`` → ``"007"``; a string (a wildcard such as ``"{n}"``) is returned as it is."""
    return n if isinstance(n, str) else f"{int(n):03d}"


def stack_name(shard: int | str) -> str:
    """File name of a prepared shard's image stack: ``stack_NNN.mrcs``."""
    return f"stack_{number(shard)}.mrcs"


def stack_path(prepare_dir: str, shard: int | str) -> str:
    return os.path.join(prepare_dir, stack_name(shard))


def shard_rejects(prepare_dir: str, shard: int | str) -> str:
    """The particles a shard's preparation left out, and why: ``rejected_NNN.npz``
    (``faults.write_faults``), gathered into :func:`rejected_particles`."""
    return os.path.join(prepare_dir, f"{REJECTED}_{number(shard)}.npz")


def rejected_particles(prepare_dir: str, ext: str) -> str:
    """``rejected.star`` or ``rejected.cs`` (ext ``"star"`` or ``"cs"``)."""
    return os.path.join(prepare_dir, f"{REJECTED}.{ext}")


def prepared_meta(prepare_dir: str) -> str:
    return os.path.join(prepare_dir, PREPARED_META)


def prepared_particles(prepare_dir: str) -> str:
    return os.path.join(prepare_dir, PREPARED_PARTICLES)


def prepared_ctf(prepare_dir: str) -> str:
    return os.path.join(prepare_dir, PREPARED_CTF)


def prepared_rows(prepare_dir: str) -> str:
    return os.path.join(prepare_dir, PREPARED_ROWS)


def row_hashes(prepare_dir: str) -> str:
    return os.path.join(prepare_dir, ROW_HASHES)


def live_dir(classify_dir: str) -> str:
    """The last exported state, its assignments and ``record.json``: ``live/``."""
    return os.path.join(classify_dir, LIVE)


def live_file(classify_dir: str, name: str) -> str:
    """A file of :func:`live_dir`: ``STATE``, ``ASSIGNMENTS`` or ``record.json``."""
    return os.path.join(live_dir(classify_dir), name)


def live_record(classify_dir: str) -> str:
    return live_file(classify_dir, "record.json")


def round_dir(classify_dir: str, r: int | str) -> str:
    """Folder of live round r's files (``live.live_round``): ``live_RRR``."""
    return os.path.join(classify_dir, f"{LIVE}_{number(r)}")


def round_file(classify_dir: str, r: int | str, name: str) -> str:
    """A file of live round r: ``STATE``, ``ASSIGNMENTS`` or ``ROUND_INFO``."""
    return os.path.join(round_dir(classify_dir, r), name)


def iteration_dir(classify_dir: str, n: int | str) -> str:
    """Folder of iteration n's files: ``iter_NNN``."""
    return os.path.join(classify_dir, f"iter_{number(n)}")


def state_path(classify_dir: str, n: int | str) -> str:
    return os.path.join(iteration_dir(classify_dir, n), STATE)


def settings_path(classify_dir: str) -> str:
    return os.path.join(classify_dir, SETTINGS)


def classify_dir_of(state_file: str) -> str:
    """The classify folder that holds the state file ``…/iter_NNN/state.npz``."""
    return os.path.dirname(os.path.dirname(state_file))


def assignments_path(classify_dir: str, n: int | str) -> str:
    return os.path.join(iteration_dir(classify_dir, n), ASSIGNMENTS)


def shard_result_path(classify_dir: str, n: int | str, shard: int | str) -> str:
    """One shard's part of full pass n: ``iter_NNN/shard_SSS.npz``."""
    return os.path.join(iteration_dir(classify_dir, n), f"shard_{number(shard)}.npz")


def check_outdir(outdir: str) -> None:
    """``ConfigError("outdir", …)`` unless ``outdir`` is, or can be made as, a folder this
    process may write in (its nearest existing ancestor is a writable folder)."""
    existing = os.path.abspath(outdir)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise ConfigError("outdir", f"{outdir}: {existing} is not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError("outdir", f"{outdir}: no permission to write in {existing}")
