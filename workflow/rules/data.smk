# Events (simulated or the user's TrackML files) and per-hit features. Per-event rules.

if CFG.data.source == "simulate":

    rule simulate_event:
        output:
            multiext(
                f"{RUN}/events/event{{event}}",
                "-hits.csv",
                "-cells.csv",
                "-particles.csv",
                "-truth.csv",
            ),
        log:
            f"{RUN}/logs/simulate_event/event{{event}}.log",
        conda:
            CONDA_ENV
        params:
            # the settings the command reads from the config: a change reruns the simulation
            simulate=CFG.section("simulate"),
            seed=CFG.seed,
            output_dir=f"{RUN}/events",
        shell:
            "trackgnn simulate --config {CONFIG:q} --events 1 --first-event-id {wildcards.event}"
            " --output {params.output_dir:q} 2> {log:q}"


rule features:
    input:
        lambda wc: CTX.event_files(wc.event),
    output:
        features=f"{RUN}/features/event{{event}}.pt",
        metrics=f"{RUN}/features/event{{event}}.json",
    log:
        f"{RUN}/logs/features/event{{event}}.log",
    conda:
        CONDA_ENV
    params:
        prefix=lambda wc: CTX.event_prefix(wc.event),
    shell:
        "trackgnn features --event {params.prefix:q} --output {output.features:q}"
        " --require-truth 2> {log:q}"
