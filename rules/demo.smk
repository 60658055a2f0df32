rule simulate_demo:
    output:
        star=out("demo/particles.star"),
        stack=out("demo/particles.mrcs"),
        truth=out("demo/truth.star"),
        references=out("demo/references.mrcs"),
    params:
        demo=config["demo"],
        seed=config["seed"],
    conda:
        CONDA_ENV
    log:
        out("logs/simulate_demo.log"),
    script:
        "../scripts/simulate_demo.py"
