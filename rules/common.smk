# Paths and small helpers shared by every stage: only wiring, no science. File names come
# from class2d.layout and derived settings from class2d's ClassifyParams, as the package uses them.
import json
import os
import sys

from snakemake.logging import logger

from class2d import layout, live
from class2d.em.params import WORKFLOW_KEYS, ClassifyParams
from class2d.errors import ConfigError, InputError
from class2d.io.count import count_particles
from class2d.prepare import shard_count, shard_rows

OUT = config["outdir"]
try:
    layout.check_outdir(OUT)
except ConfigError as err:
    sys.exit(f"error: {err}")
PREPARE_DIR = os.path.join(OUT, "prepare")
CLASSIFY_DIR = os.path.join(OUT, "classify")
CONDA_ENV = "../envs/class2d.yaml"

# ---- what each job may use: memory_gb for every job, `threads` for the heavy ones.
# runtime (minutes) is an upper bound for shards of up to 10⁵ particles of 256 px on 2 cores.
MEM_MB = int(config["memory_gb"] * 1000)
THREADS = config["threads"]
RUNTIME = {"light": 30, "prepare": 120, "iteration": 120, "full_shard": 240}


def out(path):
    """A path under the configured output folder."""
    return os.path.join(OUT, path)


def input_particles():
    """The particle file the workflow starts from: the user's, or the simulated demo."""
    if config["particles"] == "demo":
        return out("demo/particles.star")
    return config["particles"]


def particles_input():
    """The input; a user's file as ancient: a grown file re-prepares only the shards whose
    rows changed (params.digest), not every shard."""
    if HASHES is None:
        return input_particles()
    return ancient(input_particles())


def input_hashes():
    """Hashes of the input's rows (class2d.live.row_hashes), or None where they cannot be
    known when the DAG is built (the demo, made by a rule; an input the jobs will reject)."""
    if config["particles"] == "demo":
        return None
    try:
        return live.input_hashes(config["particles"], PREPARE_DIR)
    except (InputError, OSError, KeyError, ValueError):
        return None


def plan_shards():
    """Shards of the prepared stack, known when the DAG is built (class2d.live.plan_shards):
    from prepare.shards or the particle count; on an input that grew, the shards already
    prepared keep their rows.  Without row hashes, from the count alone."""
    prep = config["prepare"]
    try:
        if HASHES is None:
            demo = config["particles"] == "demo"
            n = config["demo"]["n_particles"] if demo else count_particles(config["particles"])
            rows = shard_rows(n, shard_count(n, prep["shards"], prep["particles_per_shard"]))
            return live.ShardPlan(rows, (None,) * len(rows), "fresh", "")
        return live.plan_shards(HASHES, PREPARE_DIR, prep["shards"], prep["particles_per_shard"])
    except (ConfigError, InputError) as err:
        sys.exit(f"error: {err}")


HASHES = input_hashes()
PLAN = plan_shards()
N_SHARDS = len(PLAN.rows)


def shard_paths():
    """The prepared stack's image files, one per shard."""
    return [layout.stack_path(PREPARE_DIR, s) for s in range(N_SHARDS)]


def shard_rejects():
    """The particles each shard's preparation left out, one file per shard."""
    return [layout.shard_rejects(PREPARE_DIR, s) for s in range(N_SHARDS)]


def final_outputs():
    targets = [out("classify/classes.star"), out("classify/gallery.png")]
    if config["particles"] == "demo":
        targets.append(out("classify/truth_frc.tsv"))
    stage_targets = {
        "dedup": "dedup/particles.star",
        "select": "select/selection.html",
        "rebalance": "rebalance/superclasses.star",
        "templates": "templates/templates.star",
    }
    return targets + [out(path) for stage, path in stage_targets.items() if active(stage)]


# ---- classification: iteration numbering fixed by the config (no checkpoint needed)
CLS = config["classify"]
N_ONLINE = CLS["online_iterations"]
N_LAST = N_ONLINE + CLS["final_full_iterations"]
ONLINE_ENDS = sorted(set(range(CLS["iterations_per_job"], N_ONLINE + 1, CLS["iterations_per_job"]))
                     | ({N_ONLINE} if N_ONLINE else set()))
# the first online job also makes the initial classes (iteration 0): one job fewer to start
FIRST_END = ONLINE_ENDS[0] if ONLINE_ENDS else 0


def em_config():
    """The classify section as the package takes it (workflow-only keys removed)."""
    return {**{k: v for k, v in CLS.items() if k not in WORKFLOW_KEYS},
            "memory_gb": config["memory_gb"], "particle_diameter_A": config["particle_diameter_A"]}


def alignment_res_A():
    """Å, the alignment resolution that sets the prepared box: the package's derivation."""
    return ClassifyParams.from_config(em_config(), config["seed"]).align_res_A


# ---- live: on an input that grew, a live round from the last exported state (class2d.live)
def live_settings():
    """What a classification depends on besides its rows: a change means a fresh run."""
    settings = {"classify": em_config(), "prepare": config["prepare"], "seed": config["seed"],
                "backend": config["backend"]}
    return json.loads(json.dumps(settings))        # as the record stores them


def live_decision():
    if HASHES is None:
        return live.Decision(0, "fresh", "")
    decision = live.decide(HASHES, CLASSIFY_DIR, live_settings())
    logger.info(f"class2d: prepare: {PLAN.why}; classify: {decision.why}")
    return decision


LIVE = live_decision()
#: what the exported classes are made from, for the next live round (live.remember)
LIVE_RECORD = ({} if HASHES is None else
               {"rows": int(HASHES.size), "digest": live.digest(HASHES),
                "settings": live_settings()})


def classified(name):
    """The state or assignments the classes are exported from: the last full pass's, or
    the live round's."""
    if LIVE.round:
        return layout.round_file(CLASSIFY_DIR, LIVE.round, name)
    if name == layout.STATE:
        return state_path(N_LAST)
    return layout.assignments_path(CLASSIFY_DIR, N_LAST)


def state_path(n):
    """Iteration n's state file (n an int, or a wildcard such as "{n}")."""
    return layout.state_path(CLASSIFY_DIR, n)


def previous_number(n):
    """The iteration whose state file iteration n starts from: the last one written before it."""
    return n - 1 if n - 1 > N_ONLINE else max(m for m in [0] + ONLINE_ENDS if m < n)


def previous_state(n):
    return state_path(previous_number(n))


def numbers(values):
    """A wildcard constraint matching exactly these iteration numbers."""
    return "|".join(layout.number(n) for n in values) or "none"


# ---- after classification: each optional stage passes its particles to the next
def active(stage):
    return config[stage]["activate"]


def particles_after(stage):
    """The particle file that the stage after ``stage`` reads (skipping inactive stages)."""
    order = ["classify", "dedup", "select"]
    for name in reversed(order[: order.index(stage) + 1]):
        if name == "classify" or active(name):
            return out(f"{name}/particles.star")


def classes_for_templates():
    return out("select/classes.star") if active("select") else out("classify/classes.star")


#: where the selection page tells the user to save selection.json; the select stage reads it
SELECTION_FILE = out("select/selection.json")


def selection_file():
    """The page's saved selection, when the user has saved one."""
    return [SELECTION_FILE] if os.path.exists(SELECTION_FILE) else []
