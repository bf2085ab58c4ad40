# Reconstruction: a finished run's models applied to a directory of TrackML events, inference
# only (nothing is trained). The reconstruction is a run of its own; in my.yaml:
#   run: my-reconstruction             (not the training run's name)
#   reconstruct: {models: results/default/models, events: /data/trackml/test, ids: [...]}
# plus the training config's graph, filter and tracks settings, then
#   snakemake reconstruct --configfile config/config.yaml my.yaml
# Outputs: <results_dir>/<run>/reconstruct/event#########.csv, submission.csv, report/ (truth).

RECONSTRUCT_CONFIGURED = bool(CFG.reconstruct.models or CFG.reconstruct.events)


if RECONSTRUCT_CONFIGURED:
    RECONSTRUCT_PLAN = reconstruct_plan()
    RECONSTRUCT = str(RECONSTRUCT_PLAN.output)

    rule reconstruct_events:
        input:
            models=[str(p) for p in RECONSTRUCT_PLAN.models.values()],
            events=RECONSTRUCT_PLAN.event_files(),
        output:
            submission=f"{RECONSTRUCT}/submission.csv",
            events=[
                f"{RECONSTRUCT}/event{i:09d}.csv" for i in RECONSTRUCT_PLAN.event_ids
            ],
        log:
            f"{RUN}/logs/reconstruct.log",
        conda:
            CONDA_ENV
        threads: local_cores()
        resources:
            gpu=gpus(),
        params:
            config=resolved_config,
            models=str(CFG.reconstruct.models),
            events=str(RECONSTRUCT_PLAN.events_dir),
            ids=RECONSTRUCT_PLAN.event_ids,
            graph=CFG.section("graph"),
            filter=CFG.section("filter"),
            tracks=CFG.section("tracks"),
            evaluation=CFG.section("evaluation"),
            device=CFG.device,
        shell:
            "trackgnn reconstruct --config {params.config:q} --models {params.models:q}"
            " --events {params.events:q} --ids {params.ids:q} --output {RECONSTRUCT:q} 2> {log:q}"

    rule reconstruct:
        input:
            f"{RECONSTRUCT}/submission.csv",

else:

    rule reconstruct:
        input:
            lambda wildcards: reconstruct_plan(),
