# trackgnn: the Exa.TrkX GNN tracking pipeline as a Snakemake workflow.
#   snakemake                          embedded default (config/config.yaml), local
#   snakemake --configfile config/smoke.yaml
#   snakemake --profile perlmutter     NERSC Perlmutter (SLURM), config/mu200.yaml
#   snakemake scaling                  the data-parallel scaling study (workflow/rules/studies.smk)
#   snakemake pileup_study noise_study the trained pipeline at other pile-up and noise levels
#   snakemake reconstruct --configfile config/config.yaml my.yaml   trained models on your events
#                                      (workflow/rules/reconstruct.smk)
# Rules are thin: each calls one `trackgnn` subcommand; the logic lives in src/trackgnn.

import sys

from snakemake.exceptions import WorkflowError
from snakemake.utils import min_version

min_version("9.0")

from trackgnn.config import config_from_dict, training_settings
from trackgnn.errors import ConfigError
from trackgnn.workflow import WorkflowContext


configfile: "config/config.yaml"


# snakemake --report results/report.html: the efficiency plots, the summary table, the studies.
report: "workflow/report/workflow.rst"


try:
    CFG = config_from_dict(
        config, "config (" + ", ".join(map(str, workflow.configfiles)) + ")"
    )
except ConfigError as err:
    raise WorkflowError(str(err)) from None

CTX = WorkflowContext(CFG)
RUN = str(CFG.run_dir)
# The resolved config, content-addressed so every job reads exactly the config it was planned with.
CONFIG = CTX.resolved_config_path()


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/graph.smk"
include: "workflow/rules/gnn.smk"
include: "workflow/rules/tracks.smk"
include: "workflow/rules/studies.smk"
include: "workflow/rules/reconstruct.smk"


# Aggregation only: never worth a cluster job.
localrules:
    all,
    scaling,
    pileup_study,
    noise_study,
    reconstruct,


rule all:
    default_target: True
    input:
        f"{RUN}/report/summary.json",
        # Every intermediate output too: one that was deleted, or lost when a rerun was
        # interrupted, is made again (and what reads it follows, being older), instead of
        # "Nothing to be done" over a stale report.
        expand(f"{RUN}/models/{{model}}.ckpt", model=("embedding", "filter", "gnn")),
        split_files("features", "all"),
        split_files("graph", "all"),
        split_files("filter", "all"),
        split_files("gnn", "test"),
        split_files("tracks", "test", "csv"),


onstart:
    check_local_cuda()
    shell(
        "trackgnn runlog init --config {CONFIG:q} && trackgnn runlog start --config {CONFIG:q}"
    )
    # Training jobs run for minutes to hours with their output in their logs: say where.
    print(
        f"Each job's log is under {RUN}/logs/ (the 'log:' line of the job); follow a training"
        f" stage's epochs, elapsed and remaining time with: tail -f {RUN}/logs/train_gnn.log",
        file=sys.stderr,
    )


onsuccess:
    shell("trackgnn runlog finish --config {CONFIG:q}")


onerror:
    shell("trackgnn runlog finish --status FAILED --config {CONFIG:q} || true")
