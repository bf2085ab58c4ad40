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


def resolved_config(wildcards, input):
    """The resolved config file a job's command reads (CONFIG).

    A params function of ``input`` is "derived" for Snakemake: the file's name, which changes with
    any key of the config, is no reason to rerun a job; each rule's other params are the config
    sections it reads.
    """
    return CONFIG


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
    """The (name, events) jobs of a per-event stage; (stage, None) is the {event} wildcard rule."""
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

    On a cluster the profile gives the training job an ``mpi`` resource (``srun ...``), and the job step
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
# Set here for the environments' post-deploy script, not read from the user (no envvars entry).
os.environ.update(TRACKGNN_SOURCE=workflow.basedir)


# ------------------------------------------------------------------- start, studies, reconstruct
# Input functions and constants of the Snakefile's handlers and of studies.smk and
# reconstruct.smk, kept here so that the rule files hold rules only.


def check_local_cuda():
    """Jobs that run on this machine need its GPU: fail before the first job, naming the config.

    Checked at start, not while parsing: only then is the executor known, and a cluster's
    login node plans GPU jobs without having a GPU.
    """
    if CFG.device != "cuda" or not workflow.local_exec:
        return
    import torch

    if not torch.cuda.is_available():
        raise WorkflowError(
            f"{', '.join(map(str, workflow.configfiles))}: key 'device': 'cuda' requested but "
            "torch sees no CUDA device on this machine (use cpu or auto)"
        )


# Scaling study (studies.smk)
from trackgnn.studies.scaling import SAMPLERS, SCALINGS, world_sizes

STUDY_DIR = f"{RUN}/study/scaling"
# Timed optimizer steps per configuration (a multiple of every world size: strong full-graph
# scaling splits them over the ranks), after a warm-up of one bulk draw.
STUDY_STEPS = 32
STUDY_WORLDS = world_sizes(
    CFG.gnn.world_size
    if CFG.device == "cuda"
    else max(CFG.gnn.world_size, os.cpu_count() or 1)
)


def scaling_measurements():
    """P = 1 once per sampler (the baseline of both studies), then every study at P > 1."""
    files = [f"{STUDY_DIR}/strong-{s}-P1.json" for s in SAMPLERS]
    files += [
        f"{STUDY_DIR}/{scaling}-{s}-P{p}.json"
        for scaling in SCALINGS
        for s in SAMPLERS
        for p in STUDY_WORLDS
        if p > 1
    ]
    return files


# Robustness studies (studies.smk)
from trackgnn.studies.robustness import STUDIES, point_simulation, study_points

ROBUSTNESS_DIR = f"{RUN}/study"
ROBUSTNESS_POINTS = {study: study_points(CFG, study) for study in STUDIES}
ROBUSTNESS_EVENTS = CTX.event_ids("test")[: CFG.studies.events]
EVENT_KINDS = ("hits", "cells", "particles", "truth")


def point_value(wildcards):
    return ROBUSTNESS_POINTS[wildcards.study][wildcards.point]


def point_events_dir(wildcards):
    return f"{ROBUSTNESS_DIR}/{wildcards.study}/{wildcards.point}/events"


def point_prefixes(wildcards):
    return [f"{point_events_dir(wildcards)}/event{e}" for e in ROBUSTNESS_EVENTS]


def point_simulation_setting(wildcards, setting):
    return point_simulation(CFG, wildcards.study, point_value(wildcards))[setting]


# Reconstruction target (reconstruct.smk)
def reconstruct_plan():
    # Imported here: trackgnn.reconstruct imports torch, seconds that only this target needs.
    from trackgnn.reconstruct import plan_reconstruction

    try:
        return plan_reconstruction(CFG)
    except TrackGNNError as err:
        raise WorkflowError(str(err)) from None
