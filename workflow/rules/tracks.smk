# Track building (per event) and evaluation of the test events.


for name, events in event_jobs("build_tracks", "test"):

    rule:
        name:
            name
        input:
            event_paths("gnn", events),
        output:
            tracks=event_paths("tracks", events, "csv"),
            metrics=event_paths("tracks", events, "json"),
        log:
            event_log("build_tracks", events),
        conda:
            CONDA_ENV
        resources:
            gpu=gpus(),
        params:
            config=resolved_config,
            tracks=CFG.section("tracks"),
        shell:
            "trackgnn build-tracks --config {params.config:q} --inputs {input:q} --outputs {output.tracks:q}"
            " 2> {log:q}"

    chunk_rule_settings(name, "build_tracks")


rule evaluate:
    input:
        tracks=split_files("tracks", "test", "csv"),
        graph=split_files("graph", "test"),
        filter=split_files("filter", "test"),
        gnn=split_files("gnn", "test"),
        events=[f for e in CTX.event_ids("test") for f in CTX.event_files(e)],
        timing_features=split_files("features", "test", "json"),
        timing_graph=split_files("graph", "test", "json"),
        timing_filter=split_files("filter", "test", "json"),
        timing_gnn=split_files("gnn", "test", "json"),
        timing_tracks=split_files("tracks", "test", "json"),
    output:
        summary=f"{RUN}/report/summary.json",
        table=report(
            f"{RUN}/report/summary.txt",
            caption="../report/summary.rst",
            category="Physics",
        ),
        efficiency_pt=report(
            f"{RUN}/report/efficiency_vs_pt.png",
            caption="../report/efficiency_vs_pt.rst",
            category="Physics",
        ),
        efficiency_eta=report(
            f"{RUN}/report/efficiency_vs_eta.png",
            caption="../report/efficiency_vs_eta.rst",
            category="Physics",
        ),
    log:
        f"{RUN}/logs/evaluate.log",
    conda:
        CONDA_ENV
    params:
        config=resolved_config,
        evaluation=CFG.section("evaluation"),
        events=[str(CTX.event_prefix(e)) for e in CTX.event_ids("test")],
        report_dir=lambda wildcards, output: os.path.dirname(output.summary),
    shell:
        "trackgnn evaluate --config {params.config:q} --events {params.events:q}"
        " --tracks {input.tracks:q} --graphs {input.graph:q} --filtered {input.filter:q}"
        " --scored {input.gnn:q} --timing features {input.timing_features:q}"
        " --timing graph {input.timing_graph:q} --timing filter {input.timing_filter:q}"
        " --timing gnn {input.timing_gnn:q} --timing tracks {input.timing_tracks:q}"
        " --output-dir {params.report_dir:q} 2> {log:q}"
