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
        config=resolved_config,
        training=training_settings(CFG, "gnn"),
        device=CFG.device,
        # torchrun locally; `{resources.mpi} -n {resources.tasks} trackgnn` (srun, one rank per
        # GPU) where the profile gives the rule an mpi resource. See rank_launcher().
        launcher=lambda wildcards, resources: rank_launcher(resources),
    shell:
        "{params.launcher} train gnn --config {params.config:q} --train {input.train:q}"
        " --val {input.val:q} --output {output:q} > {log:q} 2>&1"


if CFG.gnn.world_size == 1:
    # One rank is a plain single-GPU job: the SLURM executor starts it as a job step of its own
    # (srun -n 1) and refuses an mpi job of one task, so a profile's srun launcher is dropped.
    workflow.get_rule("train_gnn").resources["mpi"] = None


# Edge scoring and track building: the test events (the chunks of the test split).
for name, events in event_jobs("score_edges", "test"):

    rule:
        name:
            name
        input:
            graph=event_paths("filter", events),
            model=f"{RUN}/models/gnn.ckpt",
        output:
            graph=event_paths("gnn", events),
            metrics=event_paths("gnn", events, "json"),
        log:
            event_log("score_edges", events),
        conda:
            CONDA_ENV
        resources:
            gpu=gpus(),
        params:
            config=resolved_config,
        shell:
            "trackgnn score-edges --config {params.config:q} --model {input.model:q}"
            " --inputs {input.graph:q} --outputs {output.graph:q} 2> {log:q}"

    chunk_rule_settings(name, "score_edges")
