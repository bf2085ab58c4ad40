# Events (simulated or the user's TrackML files) and per-hit features. Per-event rules: one job
# per event, or per chunk of workflow.events_per_job events (event_jobs in common.smk).

if CFG.data.source == "simulate":
    # An event depends only on its id and the seed, whichever job simulates it.
    SIMULATE_WHICH = (
        "--events 1 --first-event-id {wildcards.event}"
        if EVENTS_PER_JOB == 1
        else "--event-ids {params.events}"
    )

    for name, events in event_jobs("simulate_event"):

        rule:
            name:
                name
            output:
                [
                    f"{RUN}/events/event{event}-{kind}.csv"
                    for event in events or ["{event}"]
                    for kind in ("hits", "cells", "particles", "truth")
                ],
            log:
                event_log("simulate_event", events),
            conda:
                CONDA_ENV
            params:
                **({} if events is None else {"events": events}),
                # the settings the command reads from the config: a change reruns the simulation
                config=resolved_config,
                simulate=CFG.section("simulate"),
                seed=CFG.seed,
                output_dir=lambda wildcards, output: os.path.dirname(output[0]),
            shell:
                "trackgnn simulate --config {params.config:q} "
                + SIMULATE_WHICH
                + " --output {params.output_dir:q} 2> {log:q}"

        chunk_rule_settings(name, "simulate_event")


for name, events in event_jobs("features"):

    rule:
        name:
            name
        input:
            for_events(CTX.event_files, events),
        output:
            features=event_paths("features", events),
            metrics=event_paths("features", events, "json"),
        log:
            event_log("features", events),
        conda:
            CONDA_ENV
        params:
            # the MLflow store and experiment of the stage run (features read no other setting)
            config=resolved_config,
            prefix=for_events(CTX.event_prefix, events),
        shell:
            "trackgnn features --config {params.config:q} --event {params.prefix:q}"
            " --output {output.features:q} --require-truth 2> {log:q}"

    chunk_rule_settings(name, "features")
