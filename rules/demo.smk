rule simulate_demo:
    output:
        star=out("demo/particles.star"),
        stack=out("demo/particles.mrcs"),
        truth=out("demo/truth.star"),
        references=out("demo/references.mrcs"),
    params:
        demo=config["demo"],
        seed=config["seed"],
        memory_gb=config["memory_gb"],
    conda:
        CONDA_ENV
    log:
        out("logs/simulate_demo.log"),
    threads: THREADS
    resources:
        mem_mb=MEM_MB,
        runtime=RUNTIME["prepare"],
    script:
        "../scripts/simulate_demo.py"


rule compare_with_truth:
    input:
        classes=out("classify/classes.mrcs"),
        references=out("demo/references.mrcs"),
    output:
        out("classify/truth_frc.tsv"),
    conda:
        CONDA_ENV
    log:
        out("logs/compare_with_truth.log"),
    threads: 1
    resources:
        mem_mb=MEM_MB,
        runtime=RUNTIME["light"],
    script:
        "../scripts/compare_with_truth.py"
