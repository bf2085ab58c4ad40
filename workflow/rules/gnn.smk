# Interaction GNN: training (a cluster rule: P data-parallel ranks) and per-event edge scoring.


def _launcher():
    """Locally torchrun starts P gloo ranks; on SLURM the profile's srun starts one rank per GPU."""
    if CFG.gnn.world_size > 1 and not workflow.executor_plugin_name == "slurm":
        return f"torchrun --standalone --nproc-per-node {CFG.gnn.world_size} -m trackgnn.cli"
    return "trackgnn"


rule train_gnn:
    input:
        train=split_files("filter", "train"),
        val=split_files("filter", "val"),
    output:
        f"{RUN}/models/gnn.ckpt",
    params:
        gnn=_training_params("gnn"),
        device=CFG.device,
        launcher=_launcher(),
    log:
        f"{RUN}/logs/train_gnn.log",
    threads: max(1, CFG.gnn.world_size)
    resources:
        gpu=1,
        tasks=CFG.gnn.world_size,
    shell:
        "{params.launcher} train gnn --config {CONFIG} --train {input.train} --val {input.val}"
        " --output {output} 2> {log}"


rule score_edges:
    input:
        graph=f"{RUN}/filter/event{{event}}.pt",
        model=f"{RUN}/models/gnn.ckpt",
    output:
        graph=f"{RUN}/gnn/event{{event}}.pt",
        metrics=f"{RUN}/gnn/event{{event}}.json",
    log:
        f"{RUN}/logs/score_edges/event{{event}}.log",
    shell:
        "trackgnn score-edges --config {CONFIG} --model {input.model} --inputs {input.graph}"
        " --outputs {output.graph} 2> {log}"
