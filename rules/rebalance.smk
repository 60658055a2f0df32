rule rebalance_classes:
    input:
        classes=classes_for_templates(),
        particles=particles_after("select"),
    output:
        particles=out("rebalance/particles.star"),
        particles_cs=out("rebalance/particles.cs"),
        excluded=out("rebalance/excluded.star"),
        excluded_cs=out("rebalance/excluded.cs"),
        superclasses=out("rebalance/superclasses.star"),
        picture=report(out("rebalance/superclasses.png"), caption="../report/superclasses.rst",
                       category="View rebalancing"),
    params:
        n_superclasses=config["rebalance"]["n_superclasses"],
        rebalance_factor=config["rebalance"]["rebalance_factor"],
        particle_diameter_A=config["particle_diameter_A"],
        seed=config["seed"],
    conda:
        CONDA_ENV
    log:
        out("logs/rebalance_classes.log"),
    threads: 1
    resources:
        mem_mb=MEM_MB,
        runtime=RUNTIME["light"],
    script:
        "../scripts/rebalance_classes.py"
