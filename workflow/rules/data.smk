rule prepare_data:
    input:
        raw=get_raw_inputs,
    output:
        data=f"{RESULTS}/prepared/{{dataset}}/data.npz",
        manifest=f"{RESULTS}/prepared/{{dataset}}/manifest.json",
    log:
        f"{RESULTS}/logs/prepare/{{dataset}}.log",
    params:
        spec=get_dataset_json,
        code=PREPARE_CODE,
        dvc=get_dvc_hash,
    conda:
        "../envs/pipeline.yaml"
    shell:
        "python -m pipeline_src prepare --dataset {wildcards.dataset} --spec-json {params.spec:q} "
        "--dvc-hash={params.dvc} --data {output.data} --manifest {output.manifest} > {log} 2>&1"
