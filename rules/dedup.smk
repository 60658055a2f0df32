rule remove_duplicates:
    input:
        particles=out("classify/particles.star"),
        classes=out("classify/classes.star"),
        stack=out("classify/classes.mrcs"),
    output:
        particles=out("dedup/particles.star"),
        particles_cs=out("dedup/particles.cs"),
        rejected=out("dedup/rejected.star"),
        rejected_cs=out("dedup/rejected.cs"),
    params:
        min_separation_A=config["dedup"]["min_separation_A"],
        pick_separation_A=config["dedup"]["pick_separation_A"],
        score=config["dedup"]["score"],
        micrograph_apix=config["dedup"]["micrograph_apix"] or None,
        pass_through=config["dedup"]["pass_through_without_locations"],
    conda:
        CONDA_ENV
    log:
        out("logs/remove_duplicates.log"),
    threads: 1
    resources:
        mem_mb=MEM_MB,
        runtime=RUNTIME["light"],
    script:
        "../scripts/remove_duplicates.py"
