"""Inputs a hostile or careless user gives, and what each must do.

Every case is one line naming the file (or key) and the problem, exit status 2, no traceback,
no warning before it, and nothing left behind; a config string never runs as a shell command
and never puts an output outside ``results_dir``. Add new cases here.
"""

from __future__ import annotations

import pickle
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch
import yaml

from trackgnn.io import event_prefix, list_event_ids, load_tensors, save_tensors
from trackgnn.simulation import simulate_events

from .conftest import SMOKE, cli, one_line_error, snakemake, tool_env, toy_graph, write_config

#: Every shell metacharacter that matters, a space and both quotes: a literal directory name.
HOSTILE = "my res $(touch injected) `touch backtick`; echo 'q' \"dq\" && touch amp"


def fails_in_one_line(result: subprocess.CompletedProcess[str], command: str) -> str:
    """The error line of a failed ``trackgnn <command>``: exit 2, no traceback, no warning."""
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Warning" not in result.stderr, result.stderr[-3000:]
    return one_line_error(result.stderr, f"trackgnn {command}: error:")


def files_under(directory: Path) -> set[Path]:
    return {p for p in directory.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def event_dir(tmp_path_factory) -> Path:
    """Three small simulated events (mu = 3), ids 7 to 9."""
    directory = tmp_path_factory.mktemp("events")
    simulate_events(3, mu=3, seed=1, output_dir=directory, first_event_id=7)
    return directory


# ------------------------------------------------------------------ config strings and the shell


@pytest.mark.slow
def test_shell_metacharacters_in_paths_are_literal_and_never_run(tmp_path, event_dir):
    """results_dir and data.trackml_dir reach every rule's shell line: quoted, they are just
    names. The pipeline's first stages run with them; no injected command runs."""
    trackml = tmp_path / f"trackml {HOSTILE}"
    trackml.mkdir()
    for path in event_dir.iterdir():
        (trackml / path.name).write_bytes(path.read_bytes())
    config = write_config(
        tmp_path / "hostile.yaml",
        {
            "results_dir": HOSTILE,
            "data": {"source": "trackml", "trackml_dir": str(trackml), "first_event_id": 7,
                     "train_events": 1, "val_events": 1, "test_events": 1},
        },
    )  # fmt: skip
    # the one event that exists is the first training event; its features need nothing else
    target = f"{HOSTILE}/smoke/features/event000000007.pt"
    result = snakemake(tmp_path, target, configs=[SMOKE, config])
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    assert load_tensors(tmp_path / target)["x"].shape[0] > 0
    for name in ("injected", "backtick", "amp"):
        assert not list(tmp_path.rglob(name)), f"a config string ran a shell command ({name})"
        assert not (Path.cwd() / name).exists()


@pytest.mark.parametrize("run", ["..", ".", "a/b", "../escape", ""])
def test_run_name_cannot_leave_results_dir(tmp_path, run):
    config = write_config(tmp_path / "run.yaml", {"run": run, "results_dir": "results"})
    result = cli("check-config", "--config", str(config))
    line = fails_in_one_line(result, "check-config")
    assert f"{config}: key 'run'" in line
    before = files_under(tmp_path)
    plan = snakemake(tmp_path, "--dry-run", configs=[SMOKE, config])
    assert plan.returncode != 0
    assert re.search(r"key 'run': .* is not allowed", plan.stdout + plan.stderr)
    assert not (tmp_path / "configs").exists()  # the layout used to land here for run ".."
    assert {p for p in files_under(tmp_path) if ".snakemake" not in p.parts} == before


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ({"tracks": {"score_cut": float("nan")}}, "tracks.score_cut"),
        ({"gnn": {"lr": float("nan")}}, "gnn.lr"),
        ({"simulate": {"mu": float("inf")}}, "simulate.mu"),
        ({"graph": {"radius": float("inf")}}, "graph.radius"),
        ({"filter": {"cut": float("-inf")}}, "filter.cut"),
    ],
)
def test_non_finite_config_numbers_are_refused(tmp_path, override, key):
    config = write_config(tmp_path / "bad.yaml", override)
    assert ".nan" in config.read_text() or ".inf" in config.read_text()
    line = fails_in_one_line(cli("check-config", "--config", str(config)), "check-config")
    assert f"{config}: key '{key}'" in line and "not a finite number" in line


# ------------------------------------------------------------------------------ event files


def test_simulation_killed_between_files_leaves_no_event(tmp_path, monkeypatch):
    """The event's files appear together or not at all: a writer that dies after some of
    them leaves no file under a final name, and no event is listed."""
    import pandas as pd

    written = []
    to_csv = pd.DataFrame.to_csv

    def dies_on_the_third(self, path, *args, **kwargs):
        if len(written) == 2:
            raise KeyboardInterrupt  # the job is killed
        written.append(path)
        return to_csv(self, path, *args, **kwargs)

    monkeypatch.setattr(pd.DataFrame, "to_csv", dies_on_the_third)
    with pytest.raises(KeyboardInterrupt):
        simulate_events(1, mu=3, seed=1, output_dir=tmp_path, first_event_id=3)
    assert len(written) == 2
    assert list_event_ids(tmp_path) == []
    assert files_under(tmp_path) == set()  # not even the temporaries are left


def test_event_without_truth_is_refused_where_the_run_needs_truth(tmp_path, event_dir):
    events = tmp_path / "events"
    events.mkdir()
    for path in event_dir.iterdir():
        if "truth" not in path.name:
            (events / path.name).write_bytes(path.read_bytes())
    prefix = str(event_prefix(events, 7))
    output = tmp_path / "features.pt"
    result = cli("features", "--event", prefix, "--output", str(output), "--require-truth")
    line = fails_in_one_line(result, "features")
    assert f"{prefix}-truth.csv: file does not exist" in line
    assert files_under(tmp_path) == files_under(events)
    # without the flag (reconstruction of a user's events) the event is fine, with no truth graph
    assert cli("features", "--event", prefix, "--output", str(output)).returncode == 0
    assert load_tensors(output)["truth_edges"].shape[1] == 0


def test_coordinate_beyond_float32_is_one_line(tmp_path, event_dir):
    events = tmp_path / "events"
    events.mkdir()
    for path in event_dir.iterdir():
        text = path.read_text()
        if path.name.endswith("-hits.csv"):
            header, first, rest = text.split("\n", 2)
            fields = first.split(",")
            fields[header.split(",").index("x")] = "1e300"
            text = "\n".join([header, ",".join(fields), rest])
        (events / path.name).write_text(text)
    result = cli("features", "--event", str(event_prefix(events, 7)), "--output", "f.pt")
    line = fails_in_one_line(result, "features")
    assert "hits.csv: column x line 2 has 1e+300, outside the float32 range" in line


def test_directory_as_hits_file_is_one_line(tmp_path):
    (tmp_path / "event000000001-hits.csv").mkdir()
    result = cli("features", "--event", str(tmp_path / "event000000001"), "--output", "f.pt")
    line = fails_in_one_line(result, "features")
    assert "event000000001-hits.csv: is a directory, not a CSV file" in line


# ------------------------------------------------------------------------------ tensor files


def graph_config(tmp_path: Path) -> Path:
    return write_config(
        tmp_path / "c.yaml", {"run": "h", "results_dir": str(tmp_path / "results"), "seed": 1}
    )


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_tensor_is_an_input_error_naming_file_and_key(tmp_path, value):
    graph = toy_graph(0)
    graph["scores"] = torch.full((graph["edge_index"].shape[1],), 0.9)
    graph["x"][3, 1] = value
    path = tmp_path / "graph.pt"
    save_tensors(graph, path)
    output = tmp_path / "tracks.csv"
    result = cli(
        "build-tracks", "--config", str(graph_config(tmp_path)),
        "--inputs", str(path), "--outputs", str(output),
    )  # fmt: skip
    line = fails_in_one_line(result, "build-tracks")
    assert f"{path}: tensor 'x' holds NaN or infinite values" in line
    assert not output.exists() and not output.with_suffix(".json").exists()


def test_raw_pickle_as_tensor_file_is_one_line_without_torch_warning(tmp_path):
    path = tmp_path / "graph.pt"
    path.write_bytes(pickle.dumps({"x": [1.0, 2.0]}, protocol=4))
    result = cli(
        "build-tracks", "--config", str(graph_config(tmp_path)),
        "--inputs", str(path), "--outputs", str(tmp_path / "t.csv"),
    )  # fmt: skip
    line = fails_in_one_line(result, "build-tracks")
    assert f"{path}: not a readable tensor file" in line


def test_tensor_files_are_byte_identical_for_the_same_tensors(tmp_path):
    """The temporary file's random name must not end up inside the zip archive."""
    graph = toy_graph(1)
    save_tensors(graph, tmp_path / "a.pt")
    save_tensors(graph, tmp_path / "b.pt")
    assert (tmp_path / "a.pt").read_bytes() == (tmp_path / "b.pt").read_bytes()


# ------------------------------------------------------------------------- output paths


def test_unequal_inputs_and_outputs_fail_before_writing(tmp_path):
    graphs = []
    for seed in (0, 1):
        graphs.append(tmp_path / f"g{seed}.pt")
        save_tensors(toy_graph(seed), graphs[-1])
    result = cli(
        "build-tracks", "--config", str(graph_config(tmp_path)),
        "--inputs", *map(str, graphs), "--outputs", str(tmp_path / "t.csv"),
    )  # fmt: skip
    line = fails_in_one_line(result, "build-tracks")
    assert "2 input file(s) but 1 output file(s)" in line
    assert files_under(tmp_path) == set(graphs) | {tmp_path / "c.yaml"}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"--tracks": []}, "2 --events but 1 --tracks files"),
        ({"--timing": ["tracking"]}, "--timing tracking: not a stage"),
        ({"--timing": ["tracks", "missing.json"]}, "missing.json: file does not exist"),
        ({"--scored": ["missing.pt", "g1.pt"]}, "missing.pt: file does not exist"),
    ],
    ids=["count", "stage", "timing-file", "graph-file"],
)
def test_evaluate_reads_exactly_the_files_it_is_given(tmp_path, change, message):
    """The evaluate command rebuilds no paths: every file is an argument, and a missing one is
    named instead of skipped."""
    graphs = []
    for seed in (0, 1):
        graphs.append(tmp_path / f"g{seed}.pt")
        save_tensors(toy_graph(seed), graphs[-1])
    tracks = tmp_path / "t.csv"
    tracks.write_text("hit_id,track_id\n")
    argv = {
        "--events": [str(tmp_path / "event000000001"), str(tmp_path / "event000000002")],
        "--tracks": [str(tracks)] * 2,
        "--graphs": list(map(str, graphs)),
        "--filtered": list(map(str, graphs)),
        "--scored": list(map(str, graphs)),
    }
    for flag, values in change.items():
        extra = [str(tmp_path / v) if v.endswith((".json", ".pt")) else v for v in values]
        argv[flag] = [str(tracks)] if flag == "--tracks" else extra
    args = [x for flag, values in argv.items() for x in (flag, *values)]
    out = tmp_path / "report"
    result = cli(
        "evaluate", "--config", str(graph_config(tmp_path)), *args, "--output-dir", str(out)
    )
    line = fails_in_one_line(result, "evaluate")
    assert message in line
    assert not out.exists()


def test_output_under_a_regular_file_is_one_line(tmp_path, event_dir):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file")
    output = blocker / "sub" / "features.pt"
    result = cli("features", "--event", str(event_prefix(event_dir, 7)), "--output", str(output))
    line = fails_in_one_line(result, "features")
    assert f"{blocker}/sub: cannot be created: it or a parent path is a file" in line
    result = cli(
        "simulate", "--events", "1", "--mu", "3", "--seed", "1", "--output", str(blocker / "ev")
    )
    line = fails_in_one_line(result, "simulate")
    assert f"{blocker}/ev: cannot be created" in line
    assert files_under(tmp_path) == {blocker}


def test_cuda_without_a_gpu_names_the_config_file(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    config = write_config(tmp_path / "cuda.yaml", {"device": "cuda"})
    graph = tmp_path / "g.pt"
    save_tensors(toy_graph(0), graph)
    result = cli(
        "score-edges", "--config", str(config), "--model", str(tmp_path / "gnn.ckpt"),
        "--inputs", str(graph), "--outputs", str(tmp_path / "s.pt"),
    )  # fmt: skip
    line = fails_in_one_line(result, "score-edges")
    assert f"{config}: key 'device': 'cuda' requested but torch sees no CUDA device" in line


# ------------------------------------------------------------------------- runs and the UI


def test_failed_run_shows_no_report_of_an_earlier_run(tmp_path):
    results = tmp_path / "results"
    config = write_config(tmp_path / "c.yaml", {"run": "r", "results_dir": str(results)})
    report = results / "r" / "report"
    report.mkdir(parents=True)
    (report / "summary.json").write_text('{"physics/technical_efficiency": 0.5}')
    time.sleep(0.05)  # the old report is strictly older than this execution's start
    for action in ("init", "start"):
        assert cli("runlog", action, "--config", str(config)).returncode == 0
    failed = cli("runlog", "finish", "--status", "FAILED", "--config", str(config))
    assert failed.returncode == 0, failed.stderr[-2000:]
    assert "efficiency" not in failed.stdout  # no table of the older report


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.slow
def test_ui_stopped_with_sigterm_stops_its_server(tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    config = write_config(tmp_path / "c.yaml", {"results_dir": str(tmp_path / "results")})
    ui = subprocess.Popen(
        [sys.executable, "-m", "trackgnn.cli", "ui", "--config", str(config), "--port", str(port)],
        env=tool_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 180
        while not _port_open(port):
            assert ui.poll() is None, "trackgnn ui exited before its server listened"
            assert time.monotonic() < deadline, "the MLflow server did not start"
            time.sleep(0.25)
        server = psutil.Process(ui.pid).children(recursive=True)
        assert server, "trackgnn ui started no server process"
        ui.send_signal(signal.SIGTERM)
        assert ui.wait(timeout=30) == 0
        _, alive = psutil.wait_procs(server, timeout=15)
        assert not alive, f"left running: {[p.pid for p in alive]}"
        assert not _port_open(port)
    finally:
        if ui.poll() is None:
            ui.kill()


def test_config_file_with_every_string_hostile_is_refused_or_literal(tmp_path):
    """Strings in every string-valued key: accepted ones are literal paths or names, the rest
    fail in one line naming the key (never a traceback)."""
    config = write_config(
        tmp_path / "c.yaml",
        {
            "run": "ok",
            "results_dir": HOSTILE,
            "data": {"trackml_dir": HOSTILE},
            "mlflow": {"experiment": HOSTILE},
        },
    )
    result = cli("check-config", "--config", str(config))
    assert result.returncode == 0, result.stderr
    resolved = yaml.safe_load(result.stdout)
    assert resolved["results_dir"] == HOSTILE and resolved["data"]["trackml_dir"] == HOSTILE
    for key, value in (("run", HOSTILE), ("results_dir", "a\nb"), ("results_dir", "r{x}")):
        bad = write_config(tmp_path / "bad.yaml", {key: value})
        line = fails_in_one_line(cli("check-config", "--config", str(bad)), "check-config")
        assert f"key '{key}'" in line
