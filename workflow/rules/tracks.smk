# Track building (per event) and evaluation of the test events.


rule build_tracks:
    input:
        f"{RUN}/gnn/event{{event}}.pt",
    output:
        tracks=f"{RUN}/tracks/event{{event}}.csv",
        metrics=f"{RUN}/tracks/event{{event}}.json",
    log:
        f"{RUN}/logs/build_tracks/event{{event}}.log",
    conda:
        CONDA_ENV
    resources:
        gpu=gpus(),
    params:
        tracks=CFG.section("tracks"),
    shell:
        "trackgnn build-tracks --config {CONFIG:q} --inputs {input:q} --outputs {output.tracks:q}"
        " 2> {log:q}"


rule evaluate:
    input:
        tracks=split_files("tracks", "test", "csv"),
        graph=split_files("graph", "test"),
        filter=split_files("filter", "test"),
        gnn=split_files("gnn", "test"),
        events=[f for e in CTX.event_ids("test") for f in CTX.event_files(e)],
    output:
        f"{RUN}/report/summary.json",
    log:
        f"{RUN}/logs/evaluate.log",
    conda:
        CONDA_ENV
    params:
        evaluation=CFG.section("evaluation"),
        events=CTX.event_ids("test"),
        report_dir=f"{RUN}/report",
    shell:
        "trackgnn evaluate --config {CONFIG:q} --event-ids {params.events}"
        " --output-dir {params.report_dir:q} 2> {log:q}"
