# Online EM: one job per `iterations_per_job` iterations, the first of them also making the
# initial classes, each later one reading the previous job's state file; every job saves
# every iteration's state (a rerun resumes from the newest). Then full passes scattered
# over shards and gathered; then the outputs.


rule init_classes:
    input:
        meta=layout.prepared_meta(PREPARE_DIR),
        ctf=layout.prepared_ctf(PREPARE_DIR),
        shards=shard_paths(),
    output:
        state_path(FIRST_END),
    params:
        em=em_config(),
        seed=config["seed"],
        backend=config["backend"],
        iterations=FIRST_END,
    conda:
        CONDA_ENV
    log:
        out("logs/classify/init_classes.log"),
    threads: THREADS
    resources:
        mem_mb=MEM_MB,
        runtime=RUNTIME["iteration"],
        gpu=0 if config["backend"] == "cpu" else 1,
    script:
        "../scripts/init_classes.py"


rule classify_iteration:
    input:
        state=lambda wc: previous_state(int(wc.n)),
        meta=layout.prepared_meta(PREPARE_DIR),
        ctf=layout.prepared_ctf(PREPARE_DIR),
        shards=shard_paths(),
    output:
        state_path("{n}"),
    wildcard_constraints:
        n=numbers(ONLINE_ENDS[1:]),
    params:
        em=em_config(),
        seed=config["seed"],
        backend=config["backend"],
        iterations=lambda wc: int(wc.n) - previous_number(int(wc.n)),
    conda:
        CONDA_ENV
    log:
        out("logs/classify/iteration_{n}.log"),
    threads: THREADS
    resources:
        mem_mb=MEM_MB,
        runtime=RUNTIME["iteration"],
        gpu=0 if config["backend"] == "cpu" else 1,
    script:
        "../scripts/classify_iteration.py"


rule classify_full_shard:
    input:
        state=lambda wc: previous_state(int(wc.n)),
        meta=layout.prepared_meta(PREPARE_DIR),
        ctf=layout.prepared_ctf(PREPARE_DIR),
        shards=shard_paths(),
    output:
        layout.shard_result_path(CLASSIFY_DIR, "{n}", "{s}"),
    wildcard_constraints:
        n=numbers(range(N_ONLINE + 1, N_LAST + 1)),
        s=numbers(range(N_SHARDS)),
    params:
        em=em_config(),
        seed=config["seed"],
        backend=config["backend"],
        last=lambda wc: int(wc.n) == N_LAST,
    conda:
        CONDA_ENV
    log:
        out("logs/classify/full_{n}_shard_{s}.log"),
    threads: THREADS
    resources:
        mem_mb=MEM_MB,
        runtime=RUNTIME["full_shard"],
        gpu=0 if config["backend"] == "cpu" else 1,
    script:
        "../scripts/classify_full_shard.py"


rule gather_full_pass:
    input:
        state=lambda wc: previous_state(int(wc.n)),
        meta=layout.prepared_meta(PREPARE_DIR),
        parts=[layout.shard_result_path(CLASSIFY_DIR, "{n}", s) for s in range(N_SHARDS)],
    output:
        state=state_path("{n}"),
        assignments=layout.assignments_path(CLASSIFY_DIR, "{n}"),
    wildcard_constraints:
        n=numbers(range(N_ONLINE + 1, N_LAST + 1)),
    params:
        em=em_config(),
        seed=config["seed"],
    conda:
        CONDA_ENV
    log:
        out("logs/classify/gather_{n}.log"),
    threads: 1
    resources:
        mem_mb=MEM_MB,
        runtime=RUNTIME["light"],
    script:
        "../scripts/gather_full_pass.py"


# A live round (class2d.live): on an input that grew since the last export, from the state
# that export kept (not produced by any rule, so nothing before it runs again).
rule classify_live_round:
    input:
        previous=ancient(layout.live_file(CLASSIFY_DIR, layout.STATE)),
        assignments=ancient(layout.live_file(CLASSIFY_DIR, layout.ASSIGNMENTS)),
        record=ancient(layout.live_record(CLASSIFY_DIR)),
        meta=layout.prepared_meta(PREPARE_DIR),
        ctf=layout.prepared_ctf(PREPARE_DIR),
        shards=shard_paths(),
    output:
        state=layout.round_file(CLASSIFY_DIR, "{r}", layout.STATE),
        assignments=layout.round_file(CLASSIFY_DIR, "{r}", layout.ASSIGNMENTS),
        info=layout.round_file(CLASSIFY_DIR, "{r}", layout.ROUND_INFO),
    wildcard_constraints:
        r=numbers([LIVE.round] if LIVE.round else []),
    params:
        em=em_config(),
        seed=config["seed"],
        backend=config["backend"],
    conda:
        CONDA_ENV
    log:
        out("logs/classify/live_{r}.log"),
    threads: THREADS
    resources:
        mem_mb=MEM_MB,
        runtime=RUNTIME["full_shard"],
        gpu=0 if config["backend"] == "cpu" else 1,
    script:
        "../scripts/classify_live_round.py"


rule export_classes:
    input:
        unpack(lambda wc: {"info": classified(layout.ROUND_INFO)} if LIVE.round else {}),
        state=classified(layout.STATE),
        meta=layout.prepared_meta(PREPARE_DIR),
        assignments=classified(layout.ASSIGNMENTS),
    output:
        classes=out("classify/classes.mrcs"),
        classes_star=out("classify/classes.star"),
        classes_cs=out("classify/classes.cs"),
        particles=out("classify/particles.star"),
        particles_cs=out("classify/particles.cs"),
        gallery=report(out("classify/gallery.png"), caption="../report/gallery.rst",
                       category="2D classification"),
        convergence=out("classify/convergence.tsv"),
        convergence_plot=report(out("classify/convergence.png"),
                                caption="../report/convergence.rst",
                                category="2D classification"),
    params:
        out_dir=lambda wildcards, output: os.path.dirname(output.classes),
        em=em_config(),
        seed=config["seed"],
        record=LIVE_RECORD,
    conda:
        CONDA_ENV
    log:
        out("logs/classify/export_classes.log"),
    threads: 1
    resources:
        mem_mb=MEM_MB,
        runtime=RUNTIME["light"],
    script:
        "../scripts/export_classes.py"
