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


# ------------------------------------------------------------------------------ per-event jobs
# The per-event stages (simulate_event, features, build_graph, filter_graph, score_edges,
# build_tracks) run workflow.events_per_job events per job. With 1 (the default) each stage is
# one rule with an {event} wildcard, a job per event, as it always was. With more, the events
# are chunked by id (trackgnn.workflow.WorkflowContext.chunks) and each chunk is a rule of its
# own, named <stage>_<first event id>: its command takes the chunk's files (every stage command
# accepts several) and writes the same per-event files. A changed event reruns its chunk's
# whole job; the other chunks stay. On the cluster this replaces Snakemake groups of per-event
# jobs, whose planning took minutes (10,000 events: see chunk_rule_settings).
EVENTS_PER_JOB = CFG.workflow.events_per_job


def event_jobs(stage, split="all"):
    """(rule name, events) of a per-event stage: (stage, None) for the {event} wildcard rule."""
    if EVENTS_PER_JOB == 1:
        return [(stage, None)]
    return [(f"{stage}_{chunk[0]}", chunk) for chunk in CTX.chunks(split)]


def event_paths(stage, events, ext="pt"):
    """A job's files of a stage: the {event} pattern, or each file of the chunk."""
    if events is None:
        return f"{RUN}/{stage}/event{{event}}.{ext}"
    return [f"{RUN}/{stage}/event{event}.{ext}" for event in events]


def for_events(function, events):
    """A job's ``function(event)``: a function of the {event} wildcard, or the values of the
    chunk's events (lists joined)."""
    if events is None:
        return lambda wildcards: function(wildcards.event)
    values = []
    for event in events:
        value = function(event)
        values.extend(value if isinstance(value, list) else [value])
    return values


def event_log(stage, events):
    if events is None:
        return f"{RUN}/logs/{stage}/event{{event}}.log"
    return f"{RUN}/logs/{stage}/event{events[0]}-{events[-1]}.log"


def chunk_rule_settings(name, stage):
    """A chunk rule takes the profile's set-resources of its stage (profiles name stages).

    And its producer test is a set lookup: Snakemake tests whether a rule makes a file by
    matching the file against each of the rule's outputs as a regular expression, compiled once
    per output. A chunk rule has no wildcards, so that is string equality; the regexes cost
    over a third of planning 2,000 events (Snakemake 9.27; the measurements are in the commit
    message). Rules with wildcards keep Snakemake's test.
    """
    if name == stage:
        return
    chunk_rule = workflow.get_rule(name)
    assert not chunk_rule.wildcard_names, name
    chunk_rule.is_producer = frozenset(map(str, chunk_rule.products())).__contains__
    for key, resource in (
        (workflow.resource_settings.overwrite_resources or {}).get(stage, {}).items()
    ):
        chunk_rule.resources[key] = resource


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
    node, one per GPU, and Snakemake's SLURM job step does not wrap the rule in ``srun -n1``
    (train_gnn of one rank has no ``mpi``: a plain job, wrapped; see gnn.smk).
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
    """srun ranks fill whole nodes (one rank is a plain job: see gnn.smk)."""
    train_gnn = (workflow.resource_settings.overwrite_resources or {}).get(
        "train_gnn", {}
    )
    if "mpi" not in train_gnn:
        return
    world = CFG.gnn.world_size
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
