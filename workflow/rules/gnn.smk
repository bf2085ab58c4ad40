# Interaction GNN: training (a cluster rule: P data-parallel ranks) and per-event edge scoring.


rule train_gnn:
    input:
        train=split_files("filter", "train"),
        val=split_files("filter", "val"),
    output:
        f"{RUN}/models/gnn.ckpt",
    log:
        f"{RUN}/logs/train_gnn.log",
    conda:
        CONDA_ENV
    # Locally each of the P ranks is a process of its own; together they use every core.
    threads: local_cores(CFG.gnn.world_size)
    resources:
        tasks=CFG.gnn.world_size,
        gpu=gpus(CFG.gnn.world_size),
    params:
        gnn=_training_params("gnn"),
        device=CFG.device,
        # torchrun locally; `{resources.mpi} -n {resources.tasks} trackgnn` (srun, one rank per
        # GPU) where the profile gives the rule an mpi resource. See rank_launcher().
        launcher=lambda wildcards, resources: rank_launcher(resources),
    shell:
        "{params.launcher} train gnn --config {CONFIG:q} --train {input.train:q}"
        " --val {input.val:q} --output {output:q} > {log:q} 2>&1"


rule score_edges:
    input:
        graph=f"{RUN}/filter/event{{event}}.pt",
        model=f"{RUN}/models/gnn.ckpt",
    output:
        graph=f"{RUN}/gnn/event{{event}}.pt",
        metrics=f"{RUN}/gnn/event{{event}}.json",
    log:
        f"{RUN}/logs/score_edges/event{{event}}.log",
    conda:
        CONDA_ENV
    resources:
        gpu=gpus(),
    shell:
        "trackgnn score-edges --config {CONFIG:q} --model {input.model:q}"
        " --inputs {input.graph:q} --outputs {output.graph:q} 2> {log:q}"
