rule train:
    input:
        unpack(get_train_inputs),
    output:
        model=f"{RESULTS}/runs/{{experiment_set}}/{{run_id}}/model.pt",
        # written by train next to model.pt (pipeline_src/spec/run_record.py)
        trained=f"{RESULTS}/runs/{{experiment_set}}/{{run_id}}/trained.json",
    log:
        f"{RESULTS}/runs/{{experiment_set}}/{{run_id}}/train.log",
    benchmark:
        f"{RESULTS}/benchmarks/{{experiment_set}}/{{run_id}}.tsv"
    params:
        # the training identity: the run less its evaluation-only keys, so a new test protocol retrains nothing
        run=get_training_json,
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
        "--threads {threads} --model {output.model} {params.base} > {log} 2>&1"


rule evaluate:
    input:
        # model and trained: the run's own, or an evaluation-only run's base's (common.smk)
        unpack(get_model_inputs),
        data=get_data_file,
        manifest=get_manifest_file,
    output:
        metrics=f"{RESULTS}/runs/{{experiment_set}}/{{run_id}}/metrics.json",
        # written by evaluate next to metrics.json (pipeline_src/spec/predictions.py)
        predictions=f"{RESULTS}/runs/{{experiment_set}}/{{run_id}}/predictions.npz",
    log:
        f"{RESULTS}/runs/{{experiment_set}}/{{run_id}}/evaluate.log",
    params:
        run=get_run_json,
        code=EVALUATE_CODE,
    threads: get_train_threads
    resources:
        gpu=get_eval_gpu_count,
        mem_mb=PARAMS["cluster"]["train_mem_mb"],
        runtime=PARAMS["cluster"]["train_runtime_min"],
    conda:
        "../envs/pipeline.yaml"
    shell:
        "python -m pipeline_src evaluate --run-json {params.run:q} --data {input.data} --manifest {input.manifest} "
        "--threads {threads} --model {input.model} --metrics {output.metrics} > {log} 2>&1"
