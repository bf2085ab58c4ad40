"""The ``trackgnn`` command line: one subcommand per pipeline stage.

Every Snakemake rule calls one of these. Stage logic lives in the stage modules; this file only
parses arguments, loads the typed config, and turns user errors into one-line messages.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from trackgnn.atomic import write_json_atomic
from trackgnn.errors import ConfigError, InputError, TrackGNNError
from trackgnn.process import peak_rss_mb

log = logging.getLogger("trackgnn")


def _number_type(
    kind: type, accept: Callable[[float], bool], requirement: str
) -> Callable[[str], Any]:
    """An argparse type: parse ``kind`` (int or float) and check ``accept``, else a clear error."""

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            noun = "an integer" if kind is int else "a number"
            raise argparse.ArgumentTypeError(f"{text!r} is not {noun}") from None
        if not accept(value):
            raise argparse.ArgumentTypeError(f"{text!r} must be {requirement}")
        return value

    return parse


_positive_int = _number_type(int, lambda v: v >= 1, "at least 1")
_non_negative_int = _number_type(int, lambda v: v >= 0, "non-negative")
_positive_float = _number_type(float, lambda v: v > 0, "positive")
_fraction = _number_type(float, lambda v: 0 <= v < 1, "in [0, 1)")


def _load_config(args: argparse.Namespace) -> Any:
    """The typed config of ``--config`` (or the defaults), its device checked when it is cuda.

    A config asking for CUDA on a machine without it fails here, naming the file, before any
    work; ``auto`` falls back to the CPU.
    """
    from trackgnn.config import config_from_dict, load_config
    from trackgnn.errors import ConfigError

    source = getattr(args, "config", None)
    cfg = load_config(source) if source else config_from_dict({}, "default config")
    if cfg.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise ConfigError(
                f"{source}: key 'device': 'cuda' requested but torch sees no CUDA device "
                "(use cpu or auto)"
            )
    return cfg


@contextlib.contextmanager
def _stage_run(
    cfg: Any, stage: str, section: str | None, system_metrics: bool = False, by_hand: bool = False
) -> Iterator[Any]:
    """An MLflow stage run for this command (a no-op logger when MLflow is unreachable).

    ``by_hand``: ``simulate`` or ``features`` run without ``--config`` (every rule passes one), on
    files outside any run directory: a no-op logger, so nothing is written beside the outputs.
    """
    from trackgnn import tracking

    if by_hand:
        yield tracking.RunLogger()
        return
    params = cfg.to_dict() if section is None else cfg.section(section)
    target = tracking.Target.from_config(cfg)
    with tracking.stage_run(target, stage, params, system_metrics=system_metrics) as run:
        yield run


@contextlib.contextmanager
def _timed(output: str | Path) -> Iterator[dict[str, Any]]:
    """Time one per-event stage execution; write its figures to ``<output>.json`` afterwards.

    The JSON (``wall_s``, ``peak_memory_mb``, ``n_events`` and the stage's own figures) is a
    declared rule output beside the main one, written only when the stage succeeded.
    """
    figures: dict[str, Any] = {}
    start = time.perf_counter()
    yield figures
    figures["wall_s"] = time.perf_counter() - start
    figures["peak_memory_mb"] = peak_rss_mb()
    figures["n_events"] = 1
    write_json_atomic(Path(output).with_suffix(".json"), figures)


def _apply_threads(cfg: Any) -> None:
    if cfg.threads:
        import torch

        torch.set_num_threads(cfg.threads)


# ----------------------------------------------------------------------------- commands
def cmd_simulate(args: argparse.Namespace) -> None:
    from trackgnn.geometry import Detector
    from trackgnn.simulation import simulate_events

    cfg = _load_config(args)
    sim = cfg.simulate

    def given(value: Any, configured: Any) -> Any:
        return configured if value is None else value

    # --event-ids: each listed event (an event's content depends only on its id and the seed,
    # so it is the same whichever job simulates it); else --events from --first-event-id.
    if args.event_ids:
        runs = [(1, event_id) for event_id in args.event_ids]
    else:
        runs = [(args.events, args.first_event_id)]
    detector = Detector.load()
    start = time.perf_counter()
    with _stage_run(cfg, "simulate_event", "simulate", by_hand=args.config is None) as run:
        n_total = 0
        for n_events, first_event_id in runs:
            simulate_events(
                n_events=n_events,
                mu=given(args.mu, sim.mu),
                seed=given(args.seed, cfg.seed),
                output_dir=args.output,
                first_event_id=first_event_id,
                generator=given(args.generator, sim.generator),
                field=given(args.field, sim.field),
                noise_fraction=given(args.noise_fraction, sim.noise_fraction),
                detector=detector,
            )
            n_total += n_events
        run.log_metrics({"n_events": n_total, "wall_s": time.perf_counter() - start})


def cmd_features(args: argparse.Namespace) -> None:
    from trackgnn.features import run_features

    pairs = _pairs("features", args.event, args.output)
    cfg = _load_config(args)
    with _stage_run(cfg, "features", "data", by_hand=args.config is None) as run:
        for step, (event, output) in enumerate(pairs):
            with _timed(output) as figures:
                features = run_features(event, output, require_truth=args.require_truth)
                figures["n_hits"] = features.n_hits
                figures["n_truth_edges"] = features.truth_edges.shape[1]
            log.info("features: %s -> %s", figures, output)
            run.log_metrics(figures, step)


def cmd_train(args: argparse.Namespace) -> None:
    """One stage training as one MLflow stage run (params: the stage's config section)."""
    cfg = _load_config(args)
    _apply_threads(cfg)
    if args.model == "embedding":
        from trackgnn.training.embedding import train_embedding as train
    elif args.model == "filter":
        from trackgnn.training.filter import train_filter as train
    else:
        from trackgnn.training.gnn import train_gnn as train
    with _stage_run(cfg, f"train_{args.model}", args.model, system_metrics=True) as run:
        trained = train(cfg, args.train, args.val, args.output, log=run.log_metrics)
        run.log_params({"n_train_events": len(args.train), "n_parameters": trained.n_parameters})


def _pairs(stage: str, inputs: Sequence[str], outputs: Sequence[str]) -> list[tuple[str, str]]:
    """(input, output) pairs of a per-event command; unequal counts fail before any work."""
    if len(inputs) != len(outputs):
        raise TrackGNNError(
            f"{stage}: {len(inputs)} input file(s) but {len(outputs)} output file(s)"
        )
    return list(zip(inputs, outputs, strict=True))


def _per_event(
    args: argparse.Namespace,
    stage: str,
    section: str,
    fn: Callable[..., dict[str, Any]],
) -> None:
    """Run a per-event inference stage over pairs of (input, output) files as one MLflow run."""
    pairs = _pairs(stage, args.inputs, args.outputs)
    cfg = _load_config(args)
    _apply_threads(cfg)
    with _stage_run(cfg, stage, section) as run:
        for step, (inp, out) in enumerate(pairs):
            with _timed(out) as metrics:
                metrics.update(fn(cfg, args.model, inp, out))
            run.log_metrics({k: v for k, v in metrics.items() if isinstance(v, int | float)}, step)


def cmd_build_graph(args: argparse.Namespace) -> None:
    from trackgnn.graph.construction import build_graph

    _per_event(args, "build_graph", "graph", build_graph)


def cmd_filter(args: argparse.Namespace) -> None:
    from trackgnn.graph.construction import filter_graph

    _per_event(args, "filter_graph", "filter", filter_graph)


def cmd_score_edges(args: argparse.Namespace) -> None:
    from trackgnn.scoring import score_edges

    _per_event(args, "score_edges", "gnn", score_edges)


def cmd_build_tracks(args: argparse.Namespace) -> None:
    from trackgnn.tracks import run_build_tracks

    pairs = _pairs("build_tracks", args.inputs, args.outputs)
    cfg = _load_config(args)
    with _stage_run(cfg, "build_tracks", "tracks") as run:
        for step, (inp, out) in enumerate(pairs):
            with _timed(out) as metrics:
                metrics.update(run_build_tracks(cfg, inp, out))
            run.log_metrics(metrics, step)


TIMED_STAGES = ("features", "graph", "filter", "gnn", "tracks")


def cmd_evaluate(args: argparse.Namespace) -> None:
    from trackgnn.evaluation.matching import EvaluationCuts
    from trackgnn.evaluation.report import EventInputs, evaluate_events, format_table

    cfg = _load_config(args)
    per_event = {"--tracks": args.tracks, "--graphs": args.graphs, "--filtered": args.filtered}
    per_event["--scored"] = args.scored
    for flag, files in per_event.items():
        if len(files) != len(args.events):
            raise ConfigError(
                f"evaluate: {len(args.events)} --events but {len(files)} {flag} files"
            )
    timing: dict[str, list[Path]] = {}
    for stage, *files in args.timing or []:
        if stage not in TIMED_STAGES:
            raise ConfigError(
                f"evaluate: --timing {stage}: not a stage ({', '.join(TIMED_STAGES)})"
            )
        timing.setdefault(stage, []).extend(Path(f) for f in files)
    for path in [*args.tracks, *args.graphs, *args.filtered, *args.scored]:
        _require_file(path)
    for path in (p for files in timing.values() for p in files):
        _require_file(path)
    events = [
        EventInputs(
            prefix=Path(prefix),
            tracks=Path(tracks),
            graphs={"graph": Path(graph), "filter": Path(filtered), "gnn": Path(scored)},
        )
        for prefix, tracks, graph, filtered, scored in zip(
            args.events, args.tracks, args.graphs, args.filtered, args.scored, strict=True
        )
    ]
    cuts = EvaluationCuts.from_config(cfg)
    with _stage_run(cfg, "evaluate", "evaluation") as mlrun:
        summary = evaluate_events(
            events,
            args.output_dir,
            cuts=cuts,
            score_cuts={"gnn": cfg.tracks.score_cut},
            timing_files=timing,
        )
        mlrun.log_metrics(summary)
        for artifact in sorted(Path(args.output_dir).glob("*")):
            mlrun.log_artifact(artifact)
    print(format_table(summary), file=sys.stderr)


def _require_file(path: str | Path) -> None:
    if not Path(path).is_file():
        raise InputError(path, "file does not exist" if not Path(path).exists() else "not a file")


def cmd_reconstruct(args: argparse.Namespace) -> None:
    from trackgnn.reconstruct import reconstruct, reconstruct_config

    cfg = reconstruct_config(args.models, args.config)
    summary = reconstruct(cfg, args.models, args.events, args.output, args.ids)
    log.info("reconstruct: %s", summary)


def cmd_runlog(args: argparse.Namespace) -> None:
    from trackgnn import tracking
    from trackgnn.config import section_hash

    cfg = _load_config(args)
    target = tracking.Target.from_config(cfg)
    if args.action == "init":
        tracking.init_store(target.tracking_uri, target.experiment)
    elif args.action == "start":
        tracking.start_pipeline_run(
            target,
            cfg.to_dict(),
            # run name and config hash: two configurations of one run stay apart in the UI
            f"{cfg.run}-{section_hash(cfg.to_dict())[:6]}",
        )
    else:
        summary, artifacts = tracking.execution_report(target, cfg.run_dir / "report", args.status)
        tracking.finish_pipeline_run(target, summary, artifacts, status=args.status)
        if summary:
            from trackgnn.evaluation.report import format_table

            print(format_table(summary))


def cmd_ui(args: argparse.Namespace) -> None:
    from trackgnn import tracking

    target = tracking.Target.from_config(_load_config(args))
    tracking.ui(target.tracking_uri, args.host, args.port, target.experiment)


def cmd_check_config(args: argparse.Namespace) -> None:
    import yaml

    cfg = _load_config(args)
    print(yaml.safe_dump(cfg.to_dict(), sort_keys=False), end="")


# ----------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="trackgnn", description="Exa.TrkX GNN track reconstruction pipeline stages."
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    parser.add_argument("-v", "--verbose", action="store_true", help="more log output")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def with_config(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("--config", type=Path, help="config YAML (default: built-in defaults)")
        return p

    p = with_config(
        sub.add_parser("simulate", help="generate TrackML-format events on the TrackML geometry")
    )
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--events", type=_positive_int, help="number of events")
    which.add_argument(
        "--event-ids", type=_non_negative_int, nargs="+", help="the ids of the events to simulate"
    )
    p.add_argument("--output", type=Path, required=True, help="output directory")
    p.add_argument(
        "--first-event-id", type=_non_negative_int, default=1000, help="with --events: the first id"
    )
    # Unset options take the config's values (the schema's defaults without --config).
    p.add_argument("--mu", type=_positive_float, help="mean pile-up (config: simulate.mu)")
    p.add_argument("--seed", type=_non_negative_int, help="random seed (config: seed)")
    p.add_argument(
        "--generator", choices=["parametric", "pythia8"], help="config: simulate.generator"
    )
    p.add_argument("--field", choices=["solenoid", "uniform"], help="config: simulate.field")
    p.add_argument(
        "--noise-fraction",
        type=_fraction,
        help="fraction of noise hits (config: simulate.noise_fraction)",
    )
    p.set_defaults(func=cmd_simulate)

    p = with_config(sub.add_parser("features", help="per-hit features and truth graph of events"))
    p.add_argument(
        "--event", nargs="+", required=True, help="event prefixes, e.g. DIR/event000001000"
    )
    p.add_argument(
        "--output",
        type=Path,
        nargs="+",
        required=True,
        help="output tensor files (.pt), one per event",
    )
    p.add_argument(
        "--require-truth",
        action="store_true",
        help="fail if the truth or particles file is missing (events to train or evaluate on)",
    )
    p.set_defaults(func=cmd_features)

    p = with_config(sub.add_parser("train", help="train a model: embedding, filter or gnn"))
    p.add_argument("model", choices=["embedding", "filter", "gnn"])
    p.add_argument("--train", nargs="+", required=True, help="training event files")
    p.add_argument("--val", nargs="+", required=True, help="validation event files")
    p.add_argument("--output", type=Path, required=True, help="checkpoint to write")
    p.set_defaults(func=cmd_train)

    for name, func, help_text in (
        ("build-graph", cmd_build_graph, "radius graph in the learned embedding (per event)"),
        ("filter", cmd_filter, "remove edges with the filter MLP (per event)"),
        ("score-edges", cmd_score_edges, "score edges with the interaction GNN (per event)"),
    ):
        p = with_config(sub.add_parser(name, help=help_text))
        p.add_argument("--model", type=Path, required=True, help="model checkpoint")
        p.add_argument("--inputs", nargs="+", required=True, help="input event tensor files")
        p.add_argument("--outputs", nargs="+", required=True, help="output files, one per input")
        p.set_defaults(func=func)

    p = with_config(sub.add_parser("build-tracks", help="connected components of scored edges"))
    p.add_argument("--inputs", nargs="+", required=True, help="scored graph files")
    p.add_argument("--outputs", nargs="+", required=True, help="submission CSVs, one per input")
    p.set_defaults(func=cmd_build_tracks)

    p = with_config(sub.add_parser("evaluate", help="physics and edge metrics, plots, summary"))
    p.add_argument(
        "--events", nargs="+", required=True, help="test event prefixes DIR/event#########"
    )
    p.add_argument("--tracks", nargs="+", required=True, help="track CSV of each event")
    p.add_argument("--graphs", nargs="+", required=True, help="candidate graph of each event")
    p.add_argument("--filtered", nargs="+", required=True, help="filtered graph of each event")
    p.add_argument("--scored", nargs="+", required=True, help="GNN-scored graph of each event")
    p.add_argument(
        "--timing",
        nargs="+",
        action="append",
        metavar=("STAGE", "JSON"),
        help="a stage and the timing files of its executions (repeatable)",
    )
    p.add_argument("--output-dir", type=Path, required=True, help="report directory")
    p.set_defaults(func=cmd_evaluate)

    p = with_config(
        sub.add_parser(
            "reconstruct",
            help="apply a trained run's models to TrackML events (all inference stages)",
            description="Run features, embedding, radius graph, filter, GNN and track building "
            "in one process; write OUTPUT/event#########.csv per event and the combined "
            "OUTPUT/submission.csv (event_id,hit_id,track_id), plus OUTPUT/report/ when every "
            "event has truth. Without --config, the training run's newest resolved config "
            "(MODELS/../configs/) is used.",
        )
    )
    p.add_argument("--models", type=Path, required=True, help="a run's models/ directory")
    p.add_argument(
        "--events",
        nargs="+",
        required=True,
        help="a TrackML events directory (.csv or .csv.gz) or event prefixes DIR/event#########",
    )
    p.add_argument(
        "--ids",
        nargs="+",
        help="with an events directory: event ids (each must exist) and inclusive ranges "
        "FIRST-LAST (the directory's events within); default: every event",
    )
    p.add_argument("--output", type=Path, required=True, help="output directory")
    p.set_defaults(func=cmd_reconstruct)

    p = with_config(sub.add_parser("runlog", help="MLflow pipeline runs (used by the Snakefile)"))
    p.add_argument("action", choices=["init", "start", "finish"])
    p.add_argument("--status", default="FINISHED", choices=["FINISHED", "FAILED"])
    p.set_defaults(func=cmd_runlog)

    p = with_config(sub.add_parser("ui", help="start the MLflow UI on the project's store"))
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=_positive_int, default=5000)
    p.set_defaults(func=cmd_ui)

    p = with_config(sub.add_parser("check-config", help="validate a config and print it resolved"))
    p.set_defaults(func=cmd_check_config)

    from trackgnn.studies import add_study_parser

    add_study_parser(sub, with_config, _positive_int)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )
    if args.debug:
        os.environ["TRACKGNN_DEBUG"] = "1"
    try:
        args.func(args)
    except TrackGNNError as err:
        if args.debug:
            raise
        print(f"trackgnn {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"trackgnn {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
