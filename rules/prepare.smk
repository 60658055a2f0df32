# Each shard of the prepared stack is its own job (in parallel; on a cluster, one node each);
# prepare_stack then writes the table and prepared.yaml once every shard is there, and gathers
# the particles each shard left out (prepare.bad_particles: skip) into rejected.star / .cs.


rule prepare_shard:
    input:
        particles=particles_input(),
    output:
        stack=layout.stack_path(PREPARE_DIR, "{s}"),
        rejects=layout.shard_rejects(PREPARE_DIR, "{s}"),
    wildcard_constraints:
        s=numbers(range(N_SHARDS)),
    params:
        shards=N_SHARDS if HASHES is None else 0,
        rows=lambda wc: PLAN.rows[int(wc.s)],
        digest=lambda wc: PLAN.digests[int(wc.s)],
        box_px=config["prepare"]["box_px"],
        diameter_A=config["particle_diameter_A"],
        invert_contrast=config["prepare"]["invert_contrast"],
        max_res_A=alignment_res_A(),
        memory_gb=config["memory_gb"],
        bad_particles=config["prepare"]["bad_particles"],
        max_bad_fraction=config["prepare"]["max_bad_fraction"],
    conda:
        CONDA_ENV
    log:
        out("logs/prepare/shard_{s}.log"),
    threads: 1
    resources:
        mem_mb=MEM_MB,
        runtime=RUNTIME["prepare"],
    script:
        "../scripts/prepare_shard.py"


rule prepare_stack:
    input:
        particles=particles_input(),
        shards=shard_paths(),
        rejects=shard_rejects(),
    output:
        star=layout.prepared_particles(PREPARE_DIR),
        rejected_star=layout.rejected_particles(PREPARE_DIR, "star"),
        rejected_cs=layout.rejected_particles(PREPARE_DIR, "cs"),
        meta=layout.prepared_meta(PREPARE_DIR),
        ctf=layout.prepared_ctf(PREPARE_DIR),
    params:
        out_dir=lambda wildcards, output: os.path.dirname(output.meta),
        rows=PLAN.rows,
        shards=config["prepare"]["shards"],
        particles_per_shard=config["prepare"]["particles_per_shard"],
        box_px=config["prepare"]["box_px"],
        diameter_A=config["particle_diameter_A"],
        invert_contrast=config["prepare"]["invert_contrast"],
        max_res_A=alignment_res_A(),
        max_bad_fraction=config["prepare"]["max_bad_fraction"],
    conda:
        CONDA_ENV
    log:
        out("logs/prepare_stack.log"),
    threads: 1
    resources:
        mem_mb=MEM_MB,
        runtime=RUNTIME["light"],
    script:
        "../scripts/prepare_stack.py"
