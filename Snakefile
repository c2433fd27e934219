# Reproduces the NoisyNN and VPN papers' tables. Run `snakemake --cores N`;
# `--configfile params/paper.yaml` for the full-scale protocol (needs a GPU and the datasets).
from snakemake.utils import min_version

min_version("9.0")


# The embedded default, unless --configfile names a params file: that file then stands alone
# (Snakemake would otherwise merge it key by key into the default's experiment sets).
if not workflow.overwrite_configfiles:

    configfile: "params/default.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/tracking.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/aggregate.smk"
include: "workflow/rules/audit.smk"


rule all:
    input:
        get_final_outputs(),
