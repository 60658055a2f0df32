rule prepare_stack:
    input:
        particles=input_particles(),
    output:
        star=layout.prepared_particles(PREPARE_DIR),
        meta=layout.prepared_meta(PREPARE_DIR),
        shards=shard_paths(),
    params:
        out_dir=lambda wildcards, output: os.path.dirname(output.meta),
        box_px=config["prepare"]["box_px"],
        diameter_A=config["prepare"]["diameter_A"],
        invert_contrast=config["prepare"]["invert_contrast"],
        shards=config["prepare"]["shards"],
        max_res_A=alignment_res_A(),
    conda:
        CONDA_ENV
    log:
        out("logs/prepare_stack.log"),
    resources:
        mem_mb=4000,
    script:
        "../scripts/prepare_stack.py"
