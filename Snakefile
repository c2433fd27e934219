# Reproduces the NoisyNN and VPN papers' tables. Run `snakemake --cores N`;
# `--configfile params/paper.yaml` for the full-scale protocol (needs a GPU and the datasets).
from snakemake.utils import min_version

min_version("9.0")


configfile: "params/default.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/tracking.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/aggregate.smk"


rule all:
    input:
        get_final_outputs(),
