"""What Snakemake reruns, and what the cluster profile asks for.

The smoke pipeline runs once for the module (a temporary working directory, the repository's
Snakefile); every test after that is a dry run that reads the planned jobs: a changed parameter
reruns exactly its stage and what depends on it, a changed input event only that event's jobs
(and, for a training event, the training that reads it), ``--forcerun``/``--until`` a single
stage. Then the Perlmutter profile from the repository root, as typed: the plan's GNN training
asks for GPUs and srun ranks the way the SLURM executor turns into the intended sbatch request,
per-event stages run in chunks of events, one job each; an unset NERSC_ACCOUNT is a one-line
error; one rank is a one-GPU job step. Chunked per-event stages (dry runs and two real stages):
a changed event reruns its chunk only. Then the conda environments the rules use, and
the scaling study: its arithmetic, and one strong-scaling point measured for real with two ranks.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sqlite3
import subprocess
import sys
import tomllib
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from packaging.requirements import Requirement

from trackgnn.errors import TrackGNNError
from trackgnn.io import save_tensors
from trackgnn.studies.scaling import SamplerChoice, parse_sampler, scaling_rows, world_sizes

from .conftest import (
    LEARNS,
    REPO,
    SMOKE,
    SMOKE_RUN,
    cli,
    planned_jobs,
    snakemake,
    tool_env,
    toy_graph,
    write_config,
)
from .e2e_helpers import CHROMIUM, render_dom

pytestmark = pytest.mark.slow
RUN = SMOKE_RUN
TEST_EVENT = "000005003"  # the smoke config's only test event
TRAIN_EVENT = "000005000"


@pytest.fixture(scope="module")
def done(smoke_run):
    """The shared smoke run: finished, so nothing is left to plan."""
    nothing = snakemake(smoke_run.work, "--dry-run", configs=[SMOKE, smoke_run.base])
    assert planned_jobs(nothing.stdout + nothing.stderr) == {}, "a finished pipeline plans no jobs"
    return smoke_run


def test_smoke_pipeline_learns(done):
    """Floors far above what an untrained or broken stage gives (AUC 0.5, no tracks)."""
    summary = json.loads((done.run / "report" / "summary.json").read_text())
    edges = summary["edge_metrics"]
    assert edges["filter"]["efficiency"]["value"] >= 0.9, edges["filter"]
    assert edges["gnn"]["auc"]["value"] >= 0.85, edges["gnn"]
    assert edges["gnn"]["efficiency"]["value"] >= 0.8, edges["gnn"]
    assert summary["technical_efficiency"]["all"]["value"] >= 0.3, summary["technical_efficiency"]
    assert summary["trackml_score"]["all"]["value"] >= 0.25, summary["trackml_score"]


def test_snakemake_report_shows_the_efficiency_plots_and_the_summary(done, tmp_path):
    html = tmp_path / "report.html"
    result = snakemake(done.work, "--report", str(html), configs=[SMOKE, done.base])
    assert result.returncode == 0, result.stderr[-3000:]
    text = html.read_text()
    for name in ("efficiency_vs_pt.png", "efficiency_vs_eta.png", "summary.txt"):
        assert name in text, name
    # the plots are embedded (the report is one self-contained file)
    assert text.count("data:image/png;base64,") >= 2 or text.count("iVBORw0KGgo") >= 2
    summary = (done.run / "report" / "summary.txt").read_text()
    assert "technical efficiency" in summary and "trackml score" in summary
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is absent (Debian package 'chromium'): report not rendered")
    # Headless Chromium opens the report and shows each plot as the report's own "view"
    # button does (app.setView on the embedded result); the displayed <img> is the plot.
    for name in ("efficiency_vs_pt.png", "efficiency_vs_eta.png"):
        shown = f'<img src="data:image/png;charset=utf8;filename={name};base64,iVBOR'
        view = tmp_path / f"view-{name}.html"
        key = f"results/{RUN}/report/{name}"
        script = (
            "<script>setTimeout(function(){"
            f'app.setView({{content:"img",contentPath:results["{key}"].data_uri,'
            f'resultPath:"{key}"}});}},500);</script>'
        )
        end = text.rindex("</body>")
        view.write_text(text[:end] + script + text[end:])
        dom = render_dom(view.as_uri(), tmp_path / "chromium", [shown])
        assert shown in dom, dom[-2000:]
    landing = render_dom(html.as_uri(), tmp_path / "chromium", ["Results"])
    assert "Results" in landing and '<img src="data:image/png' not in landing


def test_per_event_stages_rerun_to_the_same_bytes(done, tmp_path):
    """Each per-event command, run again by hand on the pipeline's inputs, writes the same bytes."""
    run, event = done.run, f"event{TEST_EVENT}"
    config = sorted((run / "configs").glob("config-*.yaml"))[-1]
    models = run / "models"
    stages = [
        (
            "features",
            ["--event", run / "events" / event, "--require-truth", "--output"],
            "features",
        ),
        ("build-graph", ["--model", models / "embedding.ckpt"], "graph"),
        ("filter", ["--model", models / "filter.ckpt"], "filter"),
        ("score-edges", ["--model", models / "gnn.ckpt"], "gnn"),
        ("build-tracks", [], "tracks"),
    ]
    previous = "features"
    for command, args, directory in stages:
        suffix = ".csv" if directory == "tracks" else ".pt"
        again = tmp_path / f"{directory}{suffix}"
        if command == "features":
            argv = [command, *map(str, args), str(again)]
        else:
            argv = [command, "--config", str(config), *map(str, args)]
            argv += ["--inputs", str(run / previous / f"{event}.pt"), "--outputs", str(again)]
        result = cli(*argv)
        assert result.returncode == 0, result.stderr[-3000:]
        original = run / directory / f"{event}{suffix}"
        assert again.read_bytes() == original.read_bytes(), f"{command}: different bytes"
        previous = directory


@pytest.mark.parametrize(
    ("output", "expected"),
    [
        ("models/gnn.ckpt", {"train_gnn": 1, "score_edges": 1, "build_tracks": 1, "evaluate": 1}),
        (
            f"filter/event{TEST_EVENT}.pt",
            {"filter_graph": 1, "score_edges": 1, "build_tracks": 1, "evaluate": 1},
        ),
    ],
    ids=["model", "event-output"],
)
def test_deleted_output_is_rebuilt_with_what_reads_it(done, output, expected):
    path = done.run / output
    aside = path.with_name(path.name + ".aside")
    path.rename(aside)
    try:
        plan = dry_run(done)
    finally:
        aside.rename(path)
    assert plan == {**expected, "all": 1}


def _merged(base: dict, overrides: dict) -> dict:
    merged = dict(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            value = _merged(base[key], value)
        merged[key] = value
    return merged


def dry_run(done, *args, overrides=None):
    configs = [SMOKE, done.base]
    if overrides is not None:
        configs.append(write_config(done.work / "changed.yaml", _merged(LEARNS, overrides)))
    result = snakemake(done.work, "--dry-run", *args, configs=configs)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    return planned_jobs(output)


DOWNSTREAM_OF_GNN = {"score_edges": 1, "build_tracks": 1, "evaluate": 1, "all": 1}


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        # track building only: the one test event, then the report
        ({"tracks": {"score_cut": 0.3}}, {"build_tracks": 1, "evaluate": 1, "all": 1}),
        # min_hits also weights the embedding's training: it and all that follows from it
        (
            {"evaluation": {"min_hits": 4}},
            {"train_embedding": 1, "build_graph": 4, "train_filter": 1, "filter_graph": 4}
            | {"train_gnn": 1, **DOWNSTREAM_OF_GNN},
        ),
        # GNN training and its per-event consumers, nothing upstream
        ({"gnn": {"hidden": 24}}, {"train_gnn": 1, **DOWNSTREAM_OF_GNN}),
        # the filter's inference cut: every event's filtering, then all that reads it
        (
            {"filter": {"cut": 0.2}},
            {"filter_graph": 4, "train_gnn": 1, **DOWNSTREAM_OF_GNN},
        ),
        # the radius graph: everything from graph building on, no features, no simulation
        (
            {"graph": {"radius": 0.25}},
            {"build_graph": 4, "train_filter": 1, "filter_graph": 4, "train_gnn": 1}
            | DOWNSTREAM_OF_GNN,
        ),
    ],
    ids=["tracks", "evaluation", "gnn", "filter-cut", "graph"],
)
def test_changed_parameter_reruns_its_stage_and_downstream(done, overrides, expected):
    assert dry_run(done, overrides=overrides) == expected


@contextlib.contextmanager
def changed_event(done, event: str):
    """Move the first hit of an event by 1 mm (a real content change: Snakemake compares
    checksums, not only times), then put the file back as it was."""
    hits = done.work / "results" / RUN / "events" / f"event{event}-hits.csv"
    original, stat = hits.read_bytes(), hits.stat()
    header, first, rest = original.decode().split("\n", 2)
    fields = first.split(",")
    column = header.split(",").index("x")
    fields[column] = repr(float(fields[column]) + 1.0)
    try:
        hits.write_text("\n".join([header, ",".join(fields), rest]))
        yield
    finally:
        hits.write_bytes(original)
        os.utime(hits, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def test_changed_test_event_reruns_only_that_events_jobs(done):
    with changed_event(done, TEST_EVENT):
        plan = dry_run(done)
    per_event = ("features", "build_graph", "filter_graph", "score_edges", "build_tracks")
    assert plan == {**dict.fromkeys(per_event, 1), "evaluate": 1, "all": 1}


def test_changed_training_event_reruns_it_and_the_training_that_reads_it(done):
    with changed_event(done, TRAIN_EVENT):
        plan = dry_run(done)
    # Its own features, then the embedding it trains; the new embedding changes every event's
    # graph. The other events' simulation and features stay.
    assert plan["features"] == 1 and "simulate_event" not in plan
    assert plan["train_embedding"] == 1 and plan["build_graph"] == 4 and plan["train_gnn"] == 1


def test_forcerun_until_reruns_a_single_stage(done):
    assert dry_run(done, "--forcerun", "train_gnn", "--until", "train_gnn") == {"train_gnn": 1}
    assert dry_run(done, "--forcerun", "filter_graph", "--until", "filter_graph") == {
        "filter_graph": 4
    }
    # Without --until, a forced stage takes what depends on it along.
    assert dry_run(done, "--forcerun", "train_gnn") == {"train_gnn": 1, **DOWNSTREAM_OF_GNN}


# ------------------------------------------------------------------------------ Perlmutter


def perlmutter_dry_run(tmp_path, account: str | None, overrides: dict | None = None):
    """``snakemake --profile perlmutter --dry-run`` from the repository root.

    Without ``overrides`` as typed: the profile's own config (config/mu200.yaml, 2,000 events),
    only the results moved to ``tmp_path``; with them, config/mu200.yaml and the overrides
    (a --configfile replaces the profile's).
    """
    env = tool_env()
    env.pop("NERSC_ACCOUNT", None)
    if account is not None:
        env["NERSC_ACCOUNT"] = account
    args = ["--profile", "perlmutter", "--dry-run", "--printshellcmds"]
    configs = []
    if overrides is None:
        args += ["--config", f"results_dir={tmp_path / 'results'}"]
    else:
        small = {"results_dir": str(tmp_path / "results"), **overrides}
        small.setdefault("data", {"train_events": 8, "val_events": 2, "test_events": 2})
        configs = [REPO / "config" / "mu200.yaml", write_config(tmp_path / "small.yaml", small)]
    result = snakemake(tmp_path, *args, configs=configs, cwd=REPO, env=env, cores=None)
    return result.returncode, result.stdout + result.stderr


def _job_block(output: str, rule: str) -> str:
    """The first printed job of ``rule``."""
    match = re.search(rf"^[ \t]*rule {rule}:\n((?:[ \t]+\S.*\n)+)", output, re.M)
    assert match, f"no {rule} job in the plan"
    return match.group(1)


def _resources(block: str) -> dict[str, str]:
    line = re.search(r"^\s*resources: (.*)$", block, re.M).group(1)
    return dict(item.split("=", 1) for item in re.split(r", (?=\w+=)", line))


def _shell(output: str, block: str) -> str:
    return re.search(r"^Shell command: (.*)$", output[output.index(block) :], re.M).group(1)


class _StubJob:
    """What the SLURM executor reads of a job, from the dry run's printed resources."""

    def __init__(self, resources: dict[str, str], threads: int) -> None:
        values = {k: int(v) if v.isdigit() else v for k, v in resources.items()}
        self.resources = SimpleNamespace(**values)
        self.resources.get = values.get
        self.threads = threads


def _sbatch(resources: dict[str, str], threads: int) -> str:
    """What the SLURM executor plugin submits for exactly these resources."""
    from snakemake_executor_plugin_slurm.submit_string import get_submit_command
    from snakemake_executor_plugin_slurm.utils import set_gres_string

    job = _StubJob(resources, threads=threads)
    params = {
        "run_uuid": "test",
        "slurm_logfile": "logs/slurm/x.log",
        "comment_str": "rule_train_gnn",
        "account": " -A m0000",
        "partition": "",
        "workdir": str(REPO),
    }
    return get_submit_command(job, params) + set_gres_string(job)


#: Per-event stages and the split whose events they run.
PER_EVENT_STAGES = {
    "simulate_event": "all",
    "features": "all",
    "build_graph": "all",
    "filter_graph": "all",
    "score_edges": "test",
    "build_tracks": "test",
}


def _per_stage(plan: dict[str, int]) -> dict[str, int]:
    """Planned jobs per per-event stage, chunk rules (<stage>_<first event>) counted together."""
    counts = dict.fromkeys(PER_EVENT_STAGES, 0)
    for rule, n in plan.items():
        stage = re.sub(r"_\d{9}$", "", rule)
        if stage in counts:
            counts[stage] += n
    return counts


def test_perlmutter_profile_as_typed_plans_the_full_scale_run(tmp_path):
    # `snakemake --profile perlmutter` with nothing else: config/mu200.yaml, 2,000 events.
    code, output = perlmutter_dry_run(tmp_path, account="m0000")
    assert code == 0, output[-3000:]
    assert "config/mu200.yaml" in output
    block = _job_block(output, "train_gnn")
    resources = _resources(block)
    assert resources["slurm_account"] == "m0000"
    assert resources["constraint"] == "gpu"
    assert (resources["gpu"], resources["tasks"], resources["tasks_per_gpu"]) == ("4", "4", "1")
    # One rank per GPU, started by srun in the job step, all four on the node.
    shell = _shell(output, block)
    assert re.match(r"srun .*-n 4 --ntasks-per-node=4 trackgnn train gnn ", shell), shell
    sbatch = _sbatch(resources, threads=4)
    for flag in ("-C gpu", "--gpus=4", "--ntasks-per-gpu=1", "--ntasks=4", "--cpus-per-gpu=32"):
        assert flag in sbatch, sbatch

    # Per-event work in chunks of workflow.events_per_job (50) events, one SLURM job each:
    # ceil(events / 50) jobs per stage (the ids start at a multiple of 50), no groups.
    mu200 = yaml.safe_load((REPO / "config" / "mu200.yaml").read_text())
    per_job, data = mu200["workflow"]["events_per_job"], mu200["data"]
    events = {"all": data["train_events"] + data["val_events"] + data["test_events"]}
    events["test"] = data["test_events"]
    plan = planned_jobs(output)
    expected = {stage: -(-events[split] // per_job) for stage, split in PER_EVENT_STAGES.items()}
    assert _per_stage(plan) == expected
    assert sum(plan.values()) < events["all"] / 10
    assert "Group job" not in output
    # A chunk job takes its stage's profile settings: CPU nodes for features, one GPU of a GPU
    # node for graph building; its command names the chunk's files.
    features = _job_block(output, r"features_\d{9}")
    assert _resources(features)["constraint"] == "cpu"
    graph = _job_block(output, r"build_graph_\d{9}")
    assert (_resources(graph)["constraint"], _resources(graph)["gpu"]) == ("gpu", "1")
    assert _resources(graph)["runtime"] == "60"
    assert len(re.findall(r"event\d{9}\.pt", _shell(output, graph))) == 2 * per_job


def test_perlmutter_profile_without_account_is_a_one_line_error(tmp_path):
    code, output = perlmutter_dry_run(tmp_path, account=None)
    assert code != 0
    assert re.search(
        r"^resource slurm_account: environment variable NERSC_ACCOUNT is not set \(export",
        output,
        re.M,
    ), output[-2000:]


def test_perlmutter_profile_runs_a_single_rank_gnn_as_a_one_gpu_job_step(tmp_path):
    code, output = perlmutter_dry_run(
        tmp_path, account="m0000", overrides={"gnn": {"world_size": 1}}
    )
    assert code == 0, output[-3000:]
    block = _job_block(output, "train_gnn")
    resources = _resources(block)
    assert (resources["gpu"], resources["tasks"], resources["constraint"]) == ("1", "1", "gpu")
    # No srun launcher of its own: the SLURM executor's job step (srun -n 1) runs the command.
    assert "mpi" not in resources
    assert _shell(output, block).startswith("trackgnn train gnn ")
    sbatch = _sbatch(resources, threads=1)
    # One GPU, one task on it.
    for flag in ("-C gpu", "--gpus=1", "--ntasks-per-gpu=1", "--cpus-per-gpu=32"):
        assert flag in sbatch, sbatch


def test_chunked_per_event_stages_rerun_only_the_changed_events_chunk(tmp_path):
    # Locally, 2 events per job: the smoke config's events 5000-5003 are two chunks.
    base = write_config(tmp_path / "chunks.yaml", {"run": RUN, "workflow": {"events_per_job": 2}})
    configs = [SMOKE, base]
    first = snakemake(tmp_path, "--dry-run", configs=configs)
    plan = planned_jobs(first.stdout + first.stderr)
    assert _per_stage(plan) == {
        "simulate_event": 2,
        "features": 2,
        "build_graph": 2,
        "filter_graph": 2,
        "score_edges": 1,
        "build_tracks": 1,
    }
    features = [f"results/{RUN}/features/event00000500{i}.pt" for i in range(4)]
    result = snakemake(tmp_path, *features, configs=configs)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    done = snakemake(tmp_path, "--dry-run", *features, configs=configs)
    assert planned_jobs(done.stdout + done.stderr) == {}
    # A changed event reruns its chunk's job (both events' features), nothing else.
    with changed_event(SimpleNamespace(work=tmp_path), "000005003"):
        again = snakemake(tmp_path, "--dry-run", *features, configs=configs)
    output = again.stdout + again.stderr
    assert planned_jobs(output) == {"features_000005002": 1}, output[-3000:]


def test_perlmutter_profile_resolves_from_the_repository_root():
    # `--profile perlmutter` finds ./perlmutter: a relative link to profiles/perlmutter.
    link = REPO / "perlmutter"
    assert link.is_symlink() and os.readlink(link) == "profiles/perlmutter"
    assert link.resolve() == (REPO / "profiles" / "perlmutter").resolve()
    # committed as a link (mode 120000), so a fresh clone has it and not a stale copy
    listed = subprocess.run(
        ["git", "-C", str(REPO), "ls-files", "--stage", "perlmutter"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert listed[:1] == ["120000"], listed


# ------------------------------------------------------------------------- conda environments


def _fake_conda(directory: Path) -> Path:
    """A `conda` that answers the queries of a dry run (no conda on test machines)."""
    directory.mkdir()
    script = directory / "conda"
    script.write_text(
        "#!/bin/sh\n"
        'case "$1" in\n'
        '  --version) echo "conda 24.11.0";;\n'
        '  info) echo \'{"conda_prefix": "/opt/conda", "root_prefix": "/opt/conda", '
        '"platform": "linux-64", "conda_version": "24.11.0", "envs_dirs": [], '
        '"pkgs_dirs": []}\';;\n'
        '  config) echo \'{"get": {"channel_priority": "strict"}, "success": true}\';;\n'
        "  *) echo '{}';;\n"
        "esac\n"
    )
    script.chmod(0o755)
    return directory


@pytest.mark.parametrize(("device", "env_file"), [("cpu", "cpu.yaml"), ("cuda", "cuda.yaml")])
def test_rules_run_in_the_conda_environment_of_the_configured_device(tmp_path, device, env_file):
    conda_dir = _fake_conda(tmp_path / "bin")
    config = write_config(tmp_path / "device.yaml", {"device": device, "run": "conda"})
    result = snakemake(
        tmp_path,
        "--dry-run",
        "--software-deployment-method",
        "conda",
        configs=[SMOKE, config],
        env=tool_env([conda_dir]),
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    created = {Path(p).name for p in re.findall(r"Conda environment (\S+) will be created", output)}
    assert created == {env_file}


def _pyproject_requirements() -> dict[str, Requirement]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    requirements = [Requirement(r) for r in project["dependencies"]]
    return {r.name.lower().replace("_", "-"): r for r in requirements}


@pytest.mark.parametrize("env_file", ["cpu.yaml", "cuda.yaml"])
def test_conda_environments_are_pinned_and_consistent_with_pyproject(env_file):
    env = yaml.safe_load((REPO / "envs" / env_file).read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    pins = {}
    for line in pip:
        if line.startswith("-"):
            continue
        requirement = Requirement(line)
        [spec] = list(requirement.specifier)  # exactly one pin
        assert spec.operator == "==", line
        pins[requirement.name.lower().replace("_", "-")] = spec.version
    required = _pyproject_requirements()
    gpu_variants = {"faiss-cpu"}  # faiss comes from conda (GPU build) in the CUDA stack
    for name, requirement in required.items():
        if name.startswith("snakemake"):
            continue  # the workflow engine runs outside the job environments
        if env_file == "cuda.yaml" and name in gpu_variants:
            continue
        assert name in pins, f"{env_file} lacks {name}"
        assert requirement.specifier.contains(pins[name], prereleases=True), (name, pins[name])
    # trackgnn itself: installed from the source tree after the environment is built
    deploy = (REPO / "envs" / env_file.replace(".yaml", ".post-deploy.sh")).read_text()
    assert "--editable" in deploy and "TRACKGNN_SOURCE" in deploy
    assert os.access(REPO / "envs" / env_file.replace(".yaml", ".post-deploy.sh"), os.X_OK)


# ------------------------------------------------------------------------------ scaling study


def _measurement(sampler: str, scaling: str, world: int, seconds: float) -> dict:
    return {
        "sampler": sampler,
        "scaling": scaling,
        "world_size": world,
        "epoch_time_s": seconds,
        "sampling_time_s": 0.1 * seconds,
        "sampling_share": 0.1,
        "steps": 32,
        "global_batch": 64 if scaling == "strong" else 64 * world,
        "peak_rss_mb": 100.0,
    }


def test_scaling_rows_compute_speedup_and_efficiency_against_one_process():
    rows = scaling_rows(
        [
            _measurement("bulk-k4", "strong", 1, 8.0),
            _measurement("bulk-k4", "strong", 2, 5.0),
            _measurement("bulk-k4", "strong", 4, 4.0),
            _measurement("bulk-k4", "weak", 2, 10.0),
            _measurement("bulk-k4", "weak", 4, 16.0),
        ]
    )
    table = {(r["scaling"], r["world_size"]): r for r in rows}
    # strong: speedup T1/TP, efficiency speedup/P
    assert table["strong", 2]["speedup"] == pytest.approx(1.6)
    assert table["strong", 4]["parallel_efficiency"] == pytest.approx(0.5)
    # weak: efficiency T1/TP, scaled speedup P*T1/TP; the P=1 run is both studies' baseline
    assert table["weak", 1]["parallel_efficiency"] == 1.0
    assert table["weak", 2]["parallel_efficiency"] == pytest.approx(0.8)
    assert table["weak", 4]["speedup"] == pytest.approx(2.0)
    with pytest.raises(TrackGNNError, match="no P=1 measurement for sampler full"):
        scaling_rows([_measurement("full", "strong", 2, 1.0)])


def test_sampler_labels_and_world_sizes():
    assert parse_sampler("bulk-k16") == SamplerChoice("bulk-k16", "shadow", "bulk", 16)
    assert parse_sampler("full").mode == "full"
    with pytest.raises(TrackGNNError, match="unknown sampler 'bulk'"):
        parse_sampler("bulk")
    assert world_sizes(1) == [1] and world_sizes(6) == [1, 2, 4] and world_sizes(8)[-1] == 8


def test_scaling_study_measures_ranks_for_real_and_reports_to_files_and_mlflow(tmp_path):
    graphs = tmp_path / "graphs"
    graphs.mkdir()
    train = []
    for i in range(3):
        train.append(str(graphs / f"event{i:09d}.pt"))
        save_tensors(toy_graph(i), train[-1])
    config = write_config(
        tmp_path / "study.yaml",
        {"run": "study", "results_dir": str(tmp_path / "results"), "seed": 1, "threads": 2,
         "gnn": {"hidden": 8, "n_iterations": 1}},
    )  # fmt: skip
    measure = ["study", "scaling", "measure", "--config", str(config), "--train", *train]
    measure += ["--sampler", "bulk-k4", "--scaling", "strong", "--steps", "8", "--batch-size", "32"]
    # As the rule asks: the same threads per rank at every P (not all of a process's cores at P=1).
    measure += ["--threads-per-rank", "1"]
    files = [tmp_path / "p1.json", tmp_path / "p2.json"]
    launches = [
        [sys.executable, "-m", "trackgnn.cli", *measure, "--world-size", "1"],
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
         "-m", "trackgnn.cli", *measure, "--world-size", "2"],
    ]  # fmt: skip
    for command, output in zip(launches, files, strict=True):
        result = subprocess.run(
            [*command, "--output", str(output)],
            env=tool_env(),
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    one, two = (json.loads(f.read_text()) for f in files)
    assert (one["world_size"], two["world_size"]) == (1, 2)
    assert (one["steps"], two["steps"], one["global_batch"], two["global_batch"]) == (8, 8, 32, 32)
    # Two ranks average their gradients in one all-reduce per step; one process has none.
    assert (one["allreduce_calls_per_step"], two["allreduce_calls_per_step"]) == (0.0, 1.0)
    assert one["threads_per_rank"] == two["threads_per_rank"] == 1
    for figures in (one, two):
        assert figures["epoch_time_s"] > 0 and 0 < figures["sampling_share"] < 1
        assert figures["peak_rss_mb"] > 50

    report = subprocess.run(
        [sys.executable, "-m", "trackgnn.cli", "study", "scaling", "report", "--config",
         str(config), "--inputs", *map(str, files), "--output-dir", str(tmp_path / "report")],
        env=tool_env(), capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert report.returncode == 0, report.stderr[-3000:]
    rows = json.loads((tmp_path / "report" / "scaling.json").read_text())
    strong = [r for r in rows if r["scaling"] == "strong" and r["world_size"] == 2]
    assert strong[0]["speedup"] == pytest.approx(one["epoch_time_s"] / two["epoch_time_s"])
    for study in ("strong", "weak"):
        assert (tmp_path / "report" / f"scaling_{study}.png").read_bytes()[
            :8
        ] == b"\x89PNG\r\n\x1a\n"
    with sqlite3.connect(tmp_path / "results" / "mlflow.db") as db:
        study_runs = db.execute(
            "SELECT r.name FROM runs r JOIN tags t ON r.run_uuid = t.run_uuid "
            "WHERE t.key = 'trackgnn.kind' AND t.value = 'study'"
        ).fetchall()
        speedups = db.execute(
            "SELECT m.value FROM metrics m JOIN runs r ON r.run_uuid = m.run_uuid "
            "WHERE r.name = 'strong-bulk-k4-P2' AND m.key = 'speedup'"
        ).fetchall()
    # one run per configuration (P=1 counts in both studies) under one study run
    assert len(study_runs) == 1 + len(rows) == 4
    assert speedups == [(pytest.approx(strong[0]["speedup"]),)]
