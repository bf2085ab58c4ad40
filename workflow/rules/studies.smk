# Scaling study of data-parallel GNN training (target `scaling`; logic in trackgnn.studies).
# Trains the GNN on the training events for a fixed workload at world sizes 1, 2, 4 ... (the
# GPUs of gnn.world_size with CUDA; the machine's cores on CPU, gloo ranks via torchrun) for
# every sampler (bulk k = 1, 4, 16, reference, full graph) and both strong and weak scaling.
# Writes results/<run>/report/scaling/{scaling.csv,scaling.json,scaling_strong.png,
# scaling_weak.png} and one MLflow run per configuration.

from trackgnn.studies import SAMPLERS, SCALINGS, world_sizes

STUDY_DIR = f"{RUN}/study/scaling"
# Timed optimizer steps per configuration (a multiple of every world size: strong full-graph
# scaling splits them over the ranks), after a warm-up of one bulk draw.
STUDY_STEPS = 32
STUDY_WORLDS = world_sizes(
    CFG.gnn.world_size
    if CFG.device == "cuda"
    else max(CFG.gnn.world_size, os.cpu_count() or 1)
)


def _study_measurements():
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


rule study_scaling_measure:
    input:
        train=split_files("filter", "train"),
    output:
        f"{STUDY_DIR}/{{scaling}}-{{sampler}}-P{{world}}.json",
    log:
        f"{RUN}/logs/study_scaling/{{scaling}}-{{sampler}}-P{{world}}.log",
    wildcard_constraints:
        scaling="strong|weak",
        sampler=r"bulk-k\d+|reference|full",
        world=r"\d+",
    conda:
        CONDA_ENV
    # Timings need the machine to themselves: locally one measurement at a time.
    threads: local_cores(STUDY_WORLDS[-1])
    resources:
        tasks=lambda wildcards: int(wildcards.world),
        gpu=lambda wildcards: gpus(int(wildcards.world)),
    params:
        launcher=lambda wildcards, resources: rank_launcher(resources),
        steps=STUDY_STEPS,
        # Every P of a study gives each rank the same threads (the cores over the largest P):
        # a weak-scaling P = 1 on all cores would measure thread scaling too.
        threads_per_rank=max(1, (os.cpu_count() or 1) // STUDY_WORLDS[-1]),
    shell:
        "{params.launcher} study scaling measure --config {CONFIG:q} --train {input.train:q}"
        " --sampler {wildcards.sampler} --scaling {wildcards.scaling}"
        " --world-size {wildcards.world} --steps {params.steps} --threads-per-rank {params.threads_per_rank}"
        " --output {output:q} > {log:q} 2>&1"


rule scaling:
    input:
        _study_measurements(),
    output:
        table=f"{RUN}/report/scaling/scaling.csv",
        rows=f"{RUN}/report/scaling/scaling.json",
        plots=expand(f"{RUN}/report/scaling/scaling_{{study}}.png", study=SCALINGS),
    log:
        f"{RUN}/logs/study_scaling/report.log",
    conda:
        CONDA_ENV
    params:
        report_dir=lambda wildcards, output: os.path.dirname(output[0]),
    shell:
        "trackgnn study scaling report --config {CONFIG:q} --inputs {input:q}"
        " --output-dir {params.report_dir:q} > {log:q} 2>&1 && cat {log:q}"
