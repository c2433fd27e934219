rule init_tracking:
    # seconds of work, and it talks to the tracking server: on a cluster it runs on the submit host
    localrule: True
    output:
        info=f"{RESULTS}/tracking.json",
    log:
        f"{RESULTS}/logs/init_tracking.log",
    params:
        sets=" ".join(SETS),
        store=lambda wildcards, output: Path(output.info).parent,  # the MLflow store's folder, indexed by tracking.json
    conda:
        "../envs/pipeline.yaml"
    shell:
        "python -m pipeline_src track-init --results {params.store} --sets {params.sets} > {log} 2>&1"


rule track_set:
    # like init_tracking: on the submit host, which reaches the tracking server (compute nodes may not)
    localrule: True
    input:
        metrics=get_set_metrics,
        info=rules.init_tracking.output.info,
    output:
        ids=f"{RESULTS}/tracking/{{experiment_set}}.json",
    log:
        f"{RESULTS}/logs/track/{{experiment_set}}.log",
    params:
        store=lambda wildcards, input: Path(input.info).parent,
    conda:
        "../envs/pipeline.yaml"
    shell:
        "python -m pipeline_src track-set --results {params.store} --set {wildcards.experiment_set} "
        "--out {output.ids} {input.metrics} > {log} 2>&1"
