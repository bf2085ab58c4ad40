# Shared settings of all rules: wildcards, input checks, cluster resources, conda environments.

import os
import re

from trackgnn.errors import TrackGNNError


wildcard_constraints:
    event=r"\d{9}",


try:
    CTX.split_ids
except (
    TrackGNNError
) as err:  # a missing directory (InputError), event or overlap (ConfigError)
    raise WorkflowError(str(err)) from None


def split_files(stage, split, ext="pt"):
    return CTX.stage_files(stage, split, ext)


# ------------------------------------------------------------------------------------ resources
# Rules declare what a job needs (ranks, and GPUs when the config asks for CUDA); where it runs
# (account, constraint, launcher, grouping) is the business of the profile (profiles/perlmutter).


def gpus(count=1):
    """GPUs a device-using job asks for: ``count`` when the config asks for CUDA, else none.

    ``auto`` asks for none: it means "use a GPU if the node has one", which on a cluster is the
    profile's choice of node, not the rule's.
    """
    return count if CFG.device == "cuda" else 0


def local_cores(minimum=1):
    """Every core Snakemake may use here (at least ``minimum``), for the training jobs.

    A training job is alone at its point of the DAG (it waits for all events' inputs), so it gets
    the whole machine instead of one core; Snakemake exports a job's threads as
    OMP_NUM_THREADS, which torch follows. With cluster executors ``--cores`` is not an integer
    and the profile sets the training jobs' CPUs (set-threads).
    """
    cores = workflow.cores if isinstance(workflow.cores, int) else 1
    return max(minimum, cores)


def rank_launcher(resources):
    """The command that starts the data-parallel ranks of a training job.

    On a cluster the profile gives the rule an ``mpi`` resource (``srun ...``): the job step then
    starts ``tasks`` ranks, ``ranks_per_node`` (a profile resource; default: all on one node) per
    node, one per GPU, and Snakemake's SLURM job step does not wrap the rule in ``srun -n1``.
    Lightning needs the per-node count explicitly (SLURM_NTASKS_PER_NODE). Without ``mpi``,
    torchrun starts the ranks as local processes. A params function of ``resources`` is
    "derived", so switching between the launchers is no reason to retrain.
    """
    mpi = resources.get("mpi")
    tasks = resources.tasks
    if mpi:
        per_node = min(tasks, resources.get("ranks_per_node") or tasks)
        return f"{mpi} -n {tasks} --ntasks-per-node={per_node} trackgnn"
    if tasks > 1:
        return f"torchrun --standalone --nproc-per-node {tasks} -m trackgnn.cli"
    return "trackgnn"


_ENV_REFERENCE = re.compile(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?")


def _check_resource_environment():
    """Fail in one line when a profile resource names an unset environment variable.

    Snakemake leaves an unset ``$NERSC_ACCOUNT`` in place, and SLURM would reject the literal
    text as an account only after the first submission.
    """
    settings = workflow.resource_settings
    resources = list((settings.default_resources or {}).items())
    for rule_resources in (settings.overwrite_resources or {}).values():
        resources.extend(rule_resources.items())
    for name, resource in resources:
        for variable in _ENV_REFERENCE.findall(str(resource.raw)):
            if variable not in os.environ:
                raise WorkflowError(
                    f"resource {name}: environment variable {variable} is not set "
                    f"(export {variable}=... before running with this profile)"
                )


def _check_rank_launcher():
    """srun ranks need at least two of them, filling whole nodes."""
    train_gnn = (workflow.resource_settings.overwrite_resources or {}).get(
        "train_gnn", {}
    )
    if "mpi" not in train_gnn:
        return
    world = CFG.gnn.world_size
    if world < 2:
        raise WorkflowError(
            "gnn.world_size: 1, but the profile launches train_gnn as srun ranks (resource mpi); "
            "set gnn.world_size to the number of GPUs (at least 2)"
        )
    per_node = (
        int(train_gnn["ranks_per_node"].raw) if "ranks_per_node" in train_gnn else world
    )
    if world > per_node and world % per_node:
        raise WorkflowError(
            f"gnn.world_size: {world} ranks do not fill nodes of {per_node} GPUs; "
            f"use a multiple of {per_node}"
        )


_check_resource_environment()
_check_rank_launcher()


# ----------------------------------------------------------------------- software environments
# Under --software-deployment-method conda every rule runs in envs/cpu.yaml or envs/cuda.yaml,
# chosen by the config's device; otherwise the conda directive is ignored.
CONDA_ENV = "../../envs/cuda.yaml" if CFG.device == "cuda" else "../../envs/cpu.yaml"
# The environments install this package from the source tree (post-deploy script).
os.environ["TRACKGNN_SOURCE"] = workflow.basedir
