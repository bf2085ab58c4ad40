# trackgnn: the Exa.TrkX GNN tracking pipeline as a Snakemake workflow.
#   snakemake                          embedded default (config/config.yaml), local
#   snakemake --configfile config/smoke.yaml
#   snakemake --profile perlmutter --configfile config/mu200.yaml   NERSC Perlmutter (SLURM)
#   snakemake scaling                  the data-parallel scaling study (workflow/rules/studies.smk)
#   snakemake reconstruct --configfile config/config.yaml my.yaml   trained models on your events
#                                      (workflow/rules/reconstruct.smk)
# Rules are thin: each calls one `trackgnn` subcommand; the logic lives in src/trackgnn.

from snakemake.exceptions import WorkflowError

from trackgnn.config import config_from_dict
from trackgnn.errors import ConfigError
from trackgnn.workflow import WorkflowContext


configfile: "config/config.yaml"


try:
    CFG = config_from_dict(config, "config (" + ", ".join(map(str, workflow.configfiles)) + ")")
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
    reconstruct,


rule all:
    default_target: True
    input:
        f"{RUN}/report/summary.json",


onstart:
    shell(f"trackgnn runlog init --config {CONFIG} && trackgnn runlog start --config {CONFIG}")


onsuccess:
    shell(f"trackgnn runlog finish --config {CONFIG}")


onerror:
    shell(f"trackgnn runlog finish --status FAILED --config {CONFIG} || true")
