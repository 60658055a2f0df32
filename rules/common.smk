# Paths and small helpers shared by every stage: only wiring, no science.
import os

OUT = config["outdir"]


def out(path):
    """A path under the configured output folder."""
    return os.path.join(OUT, path)


def input_particles():
    """The particle file the workflow starts from: the user's, or the simulated demo."""
    if config["particles"] == "demo":
        return out("demo/particles.star")
    return config["particles"]


def shard_paths():
    return [out(f"prepare/stack_{s:03d}.mrcs") for s in range(config["prepare"]["shards"])]


def final_outputs():
    return [out("prepare/prepared.yaml")]
