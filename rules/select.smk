rule select_classes:
    input:
        classes=out("classify/classes.star"),
        stack=out("classify/classes.mrcs"),
        particles=particles_after("dedup"),
        selection=selection_file(),
    output:
        particles=out("select/particles.star"),
        particles_cs=out("select/particles.cs"),
        rejected=out("select/rejected.star"),
        rejected_cs=out("select/rejected.cs"),
        classes=out("select/classes.star"),
        stack=out("select/classes.mrcs"),
        page=report(out("select/selection.html"), caption="../report/selection.rst",
                    category="Class selection"),
    params:
        mode=config["select"]["mode"],
        classes=config["select"]["classes"],
        min_particles=config["select"]["min_particles"],
        max_resolution_A=config["select"]["max_resolution_A"],
        min_posterior=config["select"]["min_posterior"],
        max_eca=config["select"]["max_eca"],
        particle_diameter_A=config["particle_diameter_A"],
        selection_file=SELECTION_FILE,
        max_particle_zscore=config["select"]["max_particle_zscore"],
    conda:
        CONDA_ENV
    log:
        out("logs/select_classes.log"),
    threads: 1
    resources:
        mem_mb=MEM_MB,
        runtime=RUNTIME["light"],
    script:
        "../scripts/select_classes.py"
