# Scaling study of data-parallel GNN training (target `scaling`; logic in trackgnn.studies.scaling).
# Trains the GNN on the training events for a fixed workload at world sizes 1, 2, 4 ... (the
# GPUs of gnn.world_size with CUDA; the machine's cores on CPU, gloo ranks via torchrun) for
# every sampler (bulk k = 1, 4, 16, reference, full graph) and both strong and weak scaling.
# Writes results/<run>/report/scaling/{scaling.csv,scaling.json,scaling_strong.png,
# scaling_weak.png} and one MLflow run per configuration.


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
        config=resolved_config,
        launcher=lambda wildcards, resources: rank_launcher(resources),
        steps=STUDY_STEPS,
        # Every P of a study gives each rank the same threads (the cores over the largest P):
        # a weak-scaling P = 1 on all cores would measure thread scaling too.
        threads_per_rank=max(1, (os.cpu_count() or 1) // STUDY_WORLDS[-1]),
    shell:
        "{params.launcher} study scaling measure --config {params.config:q} --train {input.train:q}"
        " --sampler {wildcards.sampler} --scaling {wildcards.scaling}"
        " --world-size {wildcards.world} --steps {params.steps} --threads-per-rank {params.threads_per_rank}"
        " --output {output:q} > {log:q} 2>&1"


rule scaling:
    input:
        scaling_measurements(),
    output:
        table=f"{RUN}/report/scaling/scaling.csv",
        rows=f"{RUN}/report/scaling/scaling.json",
        plots=expand(f"{RUN}/report/scaling/scaling_{{study}}.png", study=SCALINGS),
    log:
        f"{RUN}/logs/study_scaling/report.log",
    conda:
        CONDA_ENV
    params:
        config=resolved_config,
        report_dir=lambda wildcards, output: os.path.dirname(output[0]),
    shell:
        "trackgnn study scaling report --config {params.config:q} --inputs {input:q}"
        " --output-dir {params.report_dir:q} > {log:q} 2>&1 && cat {log:q}"


# Robustness studies (targets `pileup_study` and `noise_study`; logic in trackgnn.studies.robustness):
# the run's trained models applied unchanged to the test split's event ids simulated anew at
# each point (studies.pileup_mu, studies.noise_fractions). Writes
# results/<run>/report/<study>/{<study>.csv,<study>_events.csv,<study>.png} and MLflow runs.


rule simulate_study_events:
    output:
        [
            f"{ROBUSTNESS_DIR}/{{study}}/{{point}}/events/event{e}-{kind}.csv"
            for e in ROBUSTNESS_EVENTS
            for kind in EVENT_KINDS
        ],
    log:
        f"{RUN}/logs/study_{{study}}/simulate-{{point}}.log",
    wildcard_constraints:
        study="|".join(STUDIES),
        point="|".join(
            re.escape(label)
            for points in ROBUSTNESS_POINTS.values()
            for label in points
        ),
    conda:
        CONDA_ENV
    params:
        config=resolved_config,
        ids=ROBUSTNESS_EVENTS,
        mu=lambda wildcards: point_simulation_setting(wildcards, "mu"),
        noise=lambda wildcards: point_simulation_setting(wildcards, "noise_fraction"),
        simulate=CFG.section("simulate"),
        seed=CFG.seed,
        output_dir=point_events_dir,
    shell:
        "trackgnn simulate --config {params.config:q} --event-ids {params.ids} --mu {params.mu}"
        " --noise-fraction {params.noise} --output {params.output_dir:q} 2> {log:q}"


rule measure_study_point:
    input:
        models=expand(
            f"{RUN}/models/{{model}}.ckpt", model=("embedding", "filter", "gnn")
        ),
        events=lambda wildcards: [
            f"{prefix}-{kind}.csv"
            for prefix in point_prefixes(wildcards)
            for kind in EVENT_KINDS
        ],
    output:
        f"{ROBUSTNESS_DIR}/{{study}}/{{point}}.json",
    log:
        f"{RUN}/logs/study_{{study}}/measure-{{point}}.log",
    wildcard_constraints:
        study="|".join(STUDIES),
    conda:
        CONDA_ENV
    # Seconds per event are a result: one measurement at a time, on the whole machine.
    threads: local_cores()
    resources:
        gpu=gpus(),
    params:
        config=resolved_config,
        models_dir=lambda wildcards, input: os.path.dirname(input.models[0]),
        prefixes=point_prefixes,
        value=point_value,
        graph=CFG.section("graph"),
        filter=CFG.section("filter"),
        tracks=CFG.section("tracks"),
        evaluation=CFG.section("evaluation"),
        device=CFG.device,
    shell:
        "trackgnn study {wildcards.study} measure --config {params.config:q}"
        " --models {params.models_dir:q} --events {params.prefixes:q} --value {params.value}"
        " --output {output:q} 2> {log:q}"


for _study in STUDIES:

    rule:
        name:
            f"{_study}_study"
        input:
            [
                f"{ROBUSTNESS_DIR}/{_study}/{point}.json"
                for point in ROBUSTNESS_POINTS[_study]
            ],
        output:
            f"{RUN}/report/{_study}/{_study}.csv",
            f"{RUN}/report/{_study}/{_study}_events.csv",
            report(
                f"{RUN}/report/{_study}/{_study}.png",
                caption="../report/study.rst",
                category="Studies",
            ),
        log:
            f"{RUN}/logs/study_{_study}/report.log",
        conda:
            CONDA_ENV
        params:
            config=resolved_config,
            study=_study,
            report_dir=lambda wildcards, output: os.path.dirname(output[0]),
        shell:
            "trackgnn study {params.study} report --config {params.config:q} --inputs {input:q}"
            " --output-dir {params.report_dir:q} > {log:q} 2>&1 && cat {log:q}"
