# The audit: every number and claim in params/claims.yaml against the sets' runs, with the deviations of
# params/deviations.yaml marked on the cells they affect (pipeline_src/results/audit.py, verdicts.py).
import json

import yaml

from pipeline_src.spec.config import audit_set_info

AUDIT_CLAIMS = "params/claims.yaml"
AUDIT_DEVIATIONS = "params/deviations.yaml"
AUDIT_CODE = command_code("audit")  # the package modules the audit command may import


# Table names of the claims registry: one paper_<table>.{csv,md,tex} each. (Values, not get_*
# functions: lint wants functions in common.smk, and these are the audit's alone.)
with open(AUDIT_CLAIMS) as _registry:
    AUDIT_TABLES = [table for section, spec in yaml.safe_load(_registry).items() if section != "settings"
                    for table in spec.get("tables", {})]

# Each set's kind and scale, and the papers' names of our datasets and models, as JSON.
AUDIT_INFO = json.dumps(audit_set_info(PARAMS), sort_keys=True)


# tables/paper_<table>.csv and figures/audit.png also match aggregate_set's {experiment_set} patterns
ruleorder: audit > aggregate_set


rule audit:
    # seconds of pandas on small tables: not worth a cluster job
    localrule: True
    input:
        runs=expand(rules.aggregate_set.output.runs, experiment_set=SETS),
        # read through the runs tables' paths: as inputs, a deleted one is made again, not silently skipped
        predictions=get_all_predictions,
        claims=AUDIT_CLAIMS,
        deviations=AUDIT_DEVIATIONS,
    output:
        csv=f"{RESULTS}/audit.csv",
        cells=f"{RESULTS}/effects_cells.csv",
        markdown=report(f"{RESULTS}/audit.md", category="Audit", caption="../report/audit.rst"),
        figure=report(f"{RESULTS}/figures/audit.png", category="Audit", caption="../report/audit.rst"),
        # each paper table's csv is a report item whose caption shows it as a table (one caption per table:
        # a caption cannot tell which of a rule's outputs it describes)
        tables=[report(path, category="Paper tables", caption=f"../report/paper_tables/{table}.rst") if ext == "csv"
                else path for table in AUDIT_TABLES for ext in ("csv", "md", "tex")
                for path in [f"{RESULTS}/tables/paper_{table}.{ext}"]],
    log:
        f"{RESULTS}/logs/audit.log",
    params:
        info=AUDIT_INFO,
        code=AUDIT_CODE,
    conda:
        "../envs/pipeline.yaml"
    shell:
        "python -m pipeline_src audit --claims {input.claims} --deviations {input.deviations} "
        "--set-info {params.info:q} --csv {output.csv} --cells {output.cells} --markdown {output.markdown} "
        "--figure {output.figure} --tables {output.tables} --runs {input.runs} > {log} 2>&1"
