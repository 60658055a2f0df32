rule export_templates:
    input:
        classes=classes_for_templates(),
    output:
        stack=out("templates/templates.mrcs"),
        star=out("templates/templates.star"),
        cs=out("templates/templates.cs"),
    params:
        lowpass_A=config["templates"]["lowpass_A"],
        picker_apix=config["templates"]["picker_apix"] or None,
        picker_box=config["templates"]["picker_box"] or None,
        contrast=config["templates"]["contrast"],
        recentre=config["templates"]["recentre"],
        classes=config["templates"]["classes"] or None,
        particle_diameter_A=config["particle_diameter_A"],
    conda:
        CONDA_ENV
    log:
        out("logs/export_templates.log"),
    threads: 1
    resources:
        mem_mb=MEM_MB,
        runtime=RUNTIME["light"],
    script:
        "../scripts/export_templates.py"
