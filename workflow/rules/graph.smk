# Graph construction: metric-learning embedding, radius graph, filter MLP.
# A training rule's params hold training_settings(CFG, <training>) (trackgnn.config): every
# setting that shapes its weights, as its checkpoints' resume key does.


rule train_embedding:
    input:
        train=split_files("features", "train"),
        val=split_files("features", "val"),
    output:
        f"{RUN}/models/embedding.ckpt",
    log:
        f"{RUN}/logs/train_embedding.log",
    conda:
        CONDA_ENV
    threads: local_cores()
    resources:
        gpu=gpus(),
    params:
        config=resolved_config,
        training=training_settings(CFG, "embedding"),
        device=CFG.device,
    shell:
        "trackgnn train embedding --config {params.config:q} --train {input.train:q} --val {input.val:q}"
        " --output {output:q} > {log:q} 2>&1"


for name, events in event_jobs("build_graph"):

    rule:
        name:
            name
        input:
            features=event_paths("features", events),
            model=f"{RUN}/models/embedding.ckpt",
        output:
            graph=event_paths("graph", events),
            metrics=event_paths("graph", events, "json"),
        log:
            event_log("build_graph", events),
        conda:
            CONDA_ENV
        resources:
            gpu=gpus(),
        params:
            config=resolved_config,
            graph=CFG.section("graph"),
        shell:
            "trackgnn build-graph --config {params.config:q} --model {input.model:q}"
            " --inputs {input.features:q} --outputs {output.graph:q} 2> {log:q}"

    chunk_rule_settings(name, "build_graph")


rule train_filter:
    input:
        train=split_files("graph", "train"),
        val=split_files("graph", "val"),
    output:
        f"{RUN}/models/filter.ckpt",
    log:
        f"{RUN}/logs/train_filter.log",
    conda:
        CONDA_ENV
    threads: local_cores()
    resources:
        gpu=gpus(),
    params:
        config=resolved_config,
        training=training_settings(CFG, "filter"),
        device=CFG.device,
    shell:
        "trackgnn train filter --config {params.config:q} --train {input.train:q} --val {input.val:q}"
        " --output {output:q} > {log:q} 2>&1"


for name, events in event_jobs("filter_graph"):

    rule:
        name:
            name
        input:
            graph=event_paths("graph", events),
            model=f"{RUN}/models/filter.ckpt",
        output:
            graph=event_paths("filter", events),
            metrics=event_paths("filter", events, "json"),
        log:
            event_log("filter_graph", events),
        conda:
            CONDA_ENV
        resources:
            gpu=gpus(),
        params:
            config=resolved_config,
            cut=CFG.filter.cut,
            chunk_edges=CFG.filter.chunk_edges,
        shell:
            "trackgnn filter --config {params.config:q} --model {input.model:q} --inputs {input.graph:q}"
            " --outputs {output.graph:q} 2> {log:q}"

    chunk_rule_settings(name, "filter_graph")
