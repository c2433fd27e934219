rule aggregate_set:
    # seconds of work: on a cluster it runs on the submit host instead of waiting in the queue
    localrule: True
    input:
        metrics=get_set_metrics,
        tracked=rules.track_set.output.ids,  # the runs' MLflow ids, for the runs table's mlflow_run_id column
    output:
        table=report(f"{RESULTS}/tables/{{experiment_set}}.csv", category="Tables", caption="../report/table.rst"),
        markdown=f"{RESULTS}/tables/{{experiment_set}}.md",
        runs=f"{RESULTS}/tables/{{experiment_set}}_runs.csv",
        figure=report(f"{RESULTS}/figures/{{experiment_set}}.png", category="Figures", caption="../report/figure.rst"),
    log:
        f"{RESULTS}/logs/aggregate/{{experiment_set}}.log",
    params:
        kind=get_set_kind,
        code=AGGREGATE_CODE,
    conda:
        "../envs/pipeline.yaml"
    shell:
        "python -m pipeline_src aggregate --set {wildcards.experiment_set} --kind {params.kind} "
        "--table {output.table} --markdown {output.markdown} --runs {output.runs} --figure {output.figure} "
        "--tracked {input.tracked} {input.metrics} > {log} 2>&1"
