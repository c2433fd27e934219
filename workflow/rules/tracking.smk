rule init_tracking:
    # seconds of work, and it talks to the tracking server: on a cluster it runs on the submit host
    localrule: True
    output:
        info=f"{RESULTS}/tracking.json",
    log:
        f"{RESULTS}/logs/init_tracking.log",
    params:
        sets=" ".join(map(shlex.quote, SETS)),  # names are checked (schema); quoted all the same
        store=lambda wildcards, output: Path(output.info).parent,  # the MLflow store's folder, indexed by tracking.json
    conda:
        "../envs/pipeline.yaml"
    shell:
        "python -m pipeline_src track-init --results {params.store} --sets {params.sets} > {log} 2>&1"


rule track_set:
    # like init_tracking: on the submit host, which reaches the tracking server (compute nodes may not).
    # The runs' MLflow ids go to its own output; the metrics.json files are only read.
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


rule track_audit:
    # after the audit: its tables and verdict counts on an "audit" run of the experiment, so the MLflow
    # UI shows the verdicts beside the runs, and each set's summary (n, verdicts, table) on its parent run.
    # Paths are literal because this file is included before audit.smk (rules.audit does not exist yet
    # when this rule is read); they are the audit's outputs.
    localrule: True
    input:
        audit=f"{RESULTS}/audit.csv",
        cells=f"{RESULTS}/effects_cells.csv",
        markdown=f"{RESULTS}/audit.md",
        figure=f"{RESULTS}/figures/audit.png",
        info=rules.init_tracking.output.info,
    output:
        ids=f"{RESULTS}/tracking_audit.json",
    log:
        f"{RESULTS}/logs/track_audit.log",
    params:
        store=lambda wildcards, input: Path(input.info).parent,
    conda:
        "../envs/pipeline.yaml"
    shell:
        "python -m pipeline_src track-audit --results {params.store} --tables {input.audit} {input.cells} "
        "--files {input.markdown} {input.figure} --out {output.ids} > {log} 2>&1"
