# class2d: cryo-EM 2D classification as a Snakemake workflow.
#   snakemake --cores all                      # the whole chain on the built-in demo data
#   snakemake --cores all --config particles=run_data.star outdir=myrun
#   snakemake --profile profiles/slurm         # every job a Slurm job
#   snakemake --report report.html             # after a run: the pictures, browsable
# As a module of another workflow (README, "Use inside your own workflow"):
#   module class2d: snakefile: github(...) or a path; config: config["class2d"]
#   use rule * from class2d as class2d_*
import os
import sys

import yaml
from snakemake.exceptions import WorkflowError
from snakemake.utils import min_version, update_config, validate

from class2d.errors import schema_problem
from class2d.overrides import retyped

min_version("8.0")

# Top level: the defaults, then --configfile/--config over them. As a module, Snakemake skips
# `configfile` and the host's `config:` holds only the keys it sets: the defaults fill the rest.
DEFAULT_CONFIG = os.path.join(workflow.current_basedir, "config", "config.yaml")


# beside this file, so that `snakemake -s /path/to/Snakefile` runs from any folder
configfile: DEFAULT_CONFIG


with open(DEFAULT_CONFIG) as _fh:
    _defaults = yaml.safe_load(_fh)
update_config(_defaults, retyped(config, _defaults))
config.update(_defaults)


try:
    validate(config, "config/schema.yaml")
except WorkflowError as err:  # one line naming the key, not the schema's text
    sys.exit(f"error: {schema_problem(err)}")


report: "report/workflow.rst"


# GPUs are counted per node (per job on a cluster), not across every job at once
resource_scopes:
    gpu="local",


include: "rules/common.smk"
include: "rules/demo.smk"
include: "rules/prepare.smk"
include: "rules/classify.smk"
include: "rules/dedup.smk"
include: "rules/select.smk"
include: "rules/rebalance.smk"
include: "rules/templates.smk"


localrules:
    all,


rule all:
    input:
        final_outputs(),
    default_target: True
