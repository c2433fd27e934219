rule train:
    input:
        unpack(get_train_inputs),
    output:
        metrics=f"{RESULTS}/runs/{{experiment_set}}/{{run_id}}/metrics.json",
        model=f"{RESULTS}/runs/{{experiment_set}}/{{run_id}}/model.pt",
        # written by train next to metrics.json (pipeline_src/spec/predictions.py)
        predictions=f"{RESULTS}/runs/{{experiment_set}}/{{run_id}}/predictions.npz",
    log:
        f"{RESULTS}/runs/{{experiment_set}}/{{run_id}}/train.log",
    benchmark:
        f"{RESULTS}/benchmarks/{{experiment_set}}/{{run_id}}.tsv"
    params:
        run=get_run_json,
        base=get_base_flag,
        launcher=get_launcher,
        code=TRAIN_CODE,
    threads: get_train_threads
    resources:
        gpu=get_gpu_count,
        mem_mb=PARAMS["cluster"]["train_mem_mb"],
        runtime=PARAMS["cluster"]["train_runtime_min"],
    conda:
        "../envs/pipeline.yaml"
    shell:
        "{params.launcher} pipeline_src train --run-json {params.run:q} --data {input.data} --manifest {input.manifest} "
        "--threads {threads} --metrics {output.metrics} --model {output.model} {params.base} > {log} 2>&1"
