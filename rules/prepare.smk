rule prepare_stack:
    input:
        particles=input_particles(),
    output:
        star=out("prepare/particles.star"),
        meta=out("prepare/prepared.yaml"),
        shards=shard_paths(),
    params:
        box_px=config["prepare"]["box_px"],
        diameter_A=config["prepare"]["diameter_A"],
        invert_contrast=config["prepare"]["invert_contrast"],
        shards=config["prepare"]["shards"],
        max_res_A=config.get("classify", {}).get("max_align_res_A") or None,
    conda:
        CONDA_ENV
    log:
        out("logs/prepare_stack.log"),
    resources:
        mem_mb=4000,
    script:
        "../scripts/prepare_stack.py"
