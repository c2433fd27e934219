rule init_tracking:
    output:
        info=f"{RESULTS}/tracking.json",
    log:
        f"{RESULTS}/logs/init_tracking.log",
    params:
        sets=" ".join(SETS),
    conda:
        "../envs/pipeline.yaml"
    shell:
        "python -m pipeline_src track-init --results $(dirname {output.info}) --sets {params.sets} > {log} 2>&1"
