"""GNN training over several ranks: validation figures over all events, any world size.

The unit tests check the sharding functions for world sizes 1 to 4 and awkward remainders. The
multi-process tests run this file as a script under torchrun (see ``_worker``): 2 ranks validate
a fixed model (their figures must equal one process's), and 3 ranks train in full-graph and
ShaDow mode with data that does not split evenly (no crash, same model on every rank).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from trackgnn.config import config_from_dict
from trackgnn.event_data import EventGraph, GraphBatch, load_graph
from trackgnn.training.gnn import GNNModule, interleave_shards, validation_loader
from trackgnn.training.gnn_streams import (
    FullGraphStream,
    ShadowStream,
    rank_share,
    stand_in_batch,
    union_graph,
)

ROOT = Path(__file__).resolve().parents[1]
MODEL = {"node_features": 4, "hidden": 8, "n_iterations": 1}
GNN_SETTINGS = config_from_dict({"gnn": {"lr": 0.01, "pos_weight": 2.0}}).gnn
LAUNCH_ENV_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "TORCHELASTIC_RUN_ID")
# Lightning warns where an srun binary exists but this process was not started by it.
pytestmark = pytest.mark.filterwarnings("ignore:The `srun` command is available")


SMALL_TOY = {"n_tracks": 10, "n_fake": 120}


def _toy_event(seed: int) -> dict:
    from tests.test_gnn import toy_event

    return toy_event(seed, **SMALL_TOY)


@pytest.fixture(scope="module")
def event_files(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    from tests.test_gnn import write_toy_events

    return write_toy_events(tmp_path_factory.mktemp("events"), 7, **SMALL_TOY)


def _cfg(results: Path, **gnn: Any) -> Any:
    base = {"hidden": 8, "n_iterations": 1, "epochs": 1, "lr": 0.005, "shadow": {"batch_size": 64}}
    base.update(gnn)
    return config_from_dict({"run": "t", "results_dir": str(results), "seed": 3, "gnn": base})


# ---------------------------------------------------------------------------------------------
# Sharding functions
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_rank_shares_are_balanced_and_cover_the_batch(world: int) -> None:
    for size in range(13):
        batch = torch.arange(100, 100 + size)
        shares = [rank_share(batch, r, world) for r in range(world)]
        assert torch.equal(torch.cat(shares), batch)
        lengths = [len(s) for s in shares]
        assert max(lengths) - min(lengths) <= 1
        if size >= world:
            assert min(lengths) >= 1


@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_validation_shards_interleave_back_to_event_order(world: int) -> None:
    graph = stand_in_batch(load_event_graph_from(_toy_event(0)))
    for n in range(1, 7):
        graphs = [GraphBatch(**{**vars(graph), "n_samples": i + 1}) for i in range(n)]
        shards = [list(validation_loader(graphs, r, world)) for r in range(world)]
        counted = [[g for g in shard if g.n_samples] for shard in shards]
        assert [g.n_samples for g in interleave_shards(counted)] == list(range(1, n + 1))
        # Every rank runs at least one validation step (fewer events than ranks: a marked copy).
        assert all(len(shard) >= 1 for shard in shards)


def load_event_graph_from(event: dict) -> GraphBatch:
    return EventGraph.from_dict(event, "toy").to_batch()


@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_full_graph_stream_trains_every_graph_once_with_equal_steps(world: int) -> None:
    graphs = [load_event_graph_from(_toy_event(i)) for i in range(9)]
    for n in range(1, 10):
        streams = [
            FullGraphStream(graphs[:n], seed=5, rank=r, world_size=world) for r in range(world)
        ]
        epochs = [list(s) for s in streams]
        assert all(len(e) == len(streams[0]) == -(-n // world) for e in epochs)
        real = [g for e in epochs for g in e if g.n_samples]
        assert sorted(id(g) for g in real) == sorted(id(g) for g in graphs[:n])
        for g in (g for e in epochs for g in e if not g.n_samples):
            assert float(g.weight.sum()) == 0.0
        assert (streams[0].imbalance() is None) == (n % world == 0)


@pytest.mark.parametrize("world", [2, 3, 4])
def test_shadow_stream_any_remainder_no_crash_every_root_once(world: int, tmp_path: Path) -> None:
    graph = union_graph([load_event_graph_from(_toy_event(i)) for i in range(2)])
    n_roots = int((torch.bincount(graph.edge_index.flatten()) > 0).sum())
    # Remainders that left a rank without roots before (world 4: 5, 6 and 9 crashed), and
    # remainders below the world size (dropped before).
    batch_sizes = []
    for rest in (1, 2, 3, 5, 6, 9):
        batch_sizes.append(next(b for b in range(rest + 1, n_roots) if n_roots % b == rest))
    batch_sizes.append(world - 1 or 1)  # a global batch smaller than the world
    for batch_size in batch_sizes:
        cfg = _cfg(tmp_path, mode="shadow", shadow={"batch_size": batch_size, "k": 2})
        streams = [ShadowStream(graph, cfg, torch.device("cpu"), r, world) for r in range(world)]
        order = streams[0].epoch_roots()
        roots = [
            streams[r]._rank_roots(order, step)
            for step in range(len(streams[0]))
            for r in range(world)
        ]
        assert torch.equal(torch.cat(roots).sort().values, streams[0].roots.sort().values)
        epochs = [list(s) for s in streams]
        assert all(len(e) == len(streams[0]) for e in epochs), batch_size
        assert sum(b.n_samples for e in epochs for b in e) == n_roots, batch_size
        stand_ins = [b for e in epochs for b in e if not b.n_samples]
        assert all(float(b.weight.sum()) == 0.0 for b in stand_ins)
        short = (n_roots % batch_size and n_roots % batch_size < world) or batch_size < world
        assert bool(stand_ins) == bool(short), batch_size
        assert (streams[0].imbalance() is not None) == bool(short), batch_size


def test_roots_per_epoch_is_a_fresh_uniform_draw_without_replacement(tmp_path: Path) -> None:
    graph = union_graph([load_event_graph_from(_toy_event(i)) for i in range(2)])
    per_epoch, epochs = 40, 600
    cfg = _cfg(tmp_path, mode="shadow", shadow={"batch_size": 16, "roots_per_epoch": per_epoch})
    stream = ShadowStream(graph, cfg, torch.device("cpu"), 0, 1)
    n = len(stream.roots)
    assert n > 3 * per_epoch and len(stream) == 3  # 40 roots: steps of 16, 16 and 8
    counts = torch.zeros(int(graph.x.shape[0]), dtype=torch.int64)
    previous = None
    for epoch in range(epochs):
        stream.epoch = epoch
        roots = stream.epoch_roots()
        assert len(roots) == per_epoch and len(roots.unique()) == per_epoch  # no root twice
        assert torch.isin(roots, stream.roots).all()  # only vertices with an edge
        assert previous is None or not torch.equal(roots.sort().values, previous)  # fresh draw
        previous = roots.sort().values
        counts[roots] += 1
    # Each vertex is a root in an epoch with probability p = 40 / n: its count over the epochs is
    # binomial. 5 sigma bounds on every vertex (a miss has odds below 1e-4 over all vertices),
    # and the spread of the counts must be the binomial one, not that of a biased draw.
    p = per_epoch / n
    mean, sigma = epochs * p, (epochs * p * (1 - p)) ** 0.5
    root_counts = counts[stream.roots].double()
    assert float((root_counts - mean).abs().max()) < 5 * sigma
    assert 0.75 < float(root_counts.var() / sigma**2) < 1.3
    assert int(counts.sum()) == int(root_counts.sum())
    # One epoch of the stream trains exactly the drawn roots.
    stream.epoch = 7
    assert sum(b.n_samples for b in stream) == per_epoch
    # More roots per epoch than vertices with an edge: every vertex once.
    cfg = _cfg(tmp_path, mode="shadow", shadow={"batch_size": 16, "roots_per_epoch": 10 * n})
    whole = ShadowStream(graph, cfg, torch.device("cpu"), 0, 1)
    assert torch.equal(whole.epoch_roots().sort().values, whole.roots.sort().values)


def test_union_graph_offsets_each_event_and_keeps_its_data_aligned() -> None:
    from trackgnn.errors import TrackGNNError

    events = [load_event_graph_from(_toy_event(i)) for i in range(3)]
    union = union_graph(events)
    n0, e0 = int(events[0].x.shape[0]), int(events[0].edge_index.shape[1])
    e1 = e0 + int(events[1].edge_index.shape[1])
    assert torch.equal(union.edge_index[:, e0:e1], events[1].edge_index + n0)
    assert torch.equal(union.x[n0 : n0 + len(events[1].x)], events[1].x)
    assert torch.equal(union.y[e0:e1], events[1].y) and union.n_samples == 3
    with pytest.raises(TrackGNNError, match="no graphs"):
        union_graph([])


def test_shadow_stream_roots_keep_their_seeded_schedule(tmp_path: Path) -> None:
    """The roots are a function of (seed, epoch) that resumed and compared runs rely on: the
    first ``roots_per_epoch`` of one randperm of a generator seeded per epoch."""
    graph = union_graph([load_event_graph_from(_toy_event(i)) for i in range(2)])
    cfg = _cfg(tmp_path, mode="shadow", shadow={"batch_size": 16, "roots_per_epoch": 40})
    stream = ShadowStream(graph, cfg, torch.device("cpu"), 0, 1)
    for epoch in (0, 5):
        stream.epoch = epoch
        gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch)
        perm = torch.randperm(len(stream.roots), generator=gen)
        assert torch.equal(stream.epoch_roots(), stream.roots[perm[:40]])


def test_stand_in_step_adds_nothing_to_the_gradient() -> None:
    torch.manual_seed(0)
    module = GNNModule(MODEL, GNN_SETTINGS)
    batch = stand_in_batch(load_event_graph_from(_toy_event(3)))
    loss = module._loss(module(batch), batch)
    loss.backward()
    assert float(loss.detach()) == 0.0
    assert all(p.grad is None or not p.grad.any() for p in module.parameters())


# ---------------------------------------------------------------------------------------------
# Multi-process runs (this file as a torchrun script)
# ---------------------------------------------------------------------------------------------


def _validate(files: list[str], rank: int, world: int) -> dict[str, float]:
    """Validation figures of a fixed, seeded model over ``files``, as ``train_gnn`` shards them."""
    import pytorch_lightning as pl

    from trackgnn.training.distributed import trainer_kwargs

    torch.manual_seed(0)
    module = GNNModule(MODEL, GNN_SETTINGS)
    trainer = pl.Trainer(
        **trainer_kwargs(world, "cpu"),
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        use_distributed_sampler=False,  # as in train_gnn: the loader is this rank's share
    )
    graphs = [load_graph(f).to_batch() for f in files]
    trainer.validate(module, validation_loader(graphs, rank, world), verbose=False)
    return {k: float(v) for k, v in sorted(trainer.callback_metrics.items())}


def _worker(task: str, out_dir: Path, args: dict[str, Any]) -> None:
    torch.set_num_threads(1)
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    if task == "validate":
        result: dict[str, Any] = _validate(args["val"], rank, world)
    else:
        from trackgnn.training.gnn import train_gnn

        result = {}
        for mode, batch_size in (("full", 64), ("shadow", args["shadow_batch"])):
            cfg = _cfg(
                out_dir / "results",
                mode=mode,
                world_size=world,
                shadow={"batch_size": batch_size},
            )
            trainer = train_gnn(cfg, args["train"], args["val"], out_dir / f"{mode}.ckpt").trainer
            state = trainer.lightning_module.state_dict()
            torch.save(state, out_dir / f"{mode}-rank{rank}.pt")
            result[mode] = {
                "steps": trainer.global_step,
                "val_auc": float(trainer.callback_metrics["val_auc"]),
            }
    (out_dir / f"rank{rank}.json").write_text(json.dumps(result))


def _torchrun(
    task: str, world: int, out_dir: Path, args: dict[str, Any]
) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_ENV_VARS}
    src = str(ROOT / "src")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, str(ROOT), env.get("PYTHONPATH")) if p)
    env.update(OMP_NUM_THREADS="1", MLFLOW_TRACKING_URI="", PYTHONHASHSEED="0")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += ["--nproc-per-node", str(world), __file__, task, str(out_dir), json.dumps(args)]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    return result


def test_two_ranks_give_the_validation_figures_of_one(
    event_files: list[str], tmp_path: Path
) -> None:
    val = event_files[:3]  # 2 events on rank 0, 1 on rank 1
    _torchrun("validate", 2, tmp_path, {"val": val})
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    reference = _validate(val, 0, 1)
    assert set(reference) == {"val_loss", "val_precision", "val_recall", "val_auc"}
    assert ranks[0] == ranks[1] == reference
    # Rank 0's share alone gives other figures: the comparison can tell them apart.
    assert _validate(val[0::2], 0, 1) != reference


@pytest.mark.slow
def test_three_ranks_train_full_graph_and_shadow_with_remainders(
    event_files: list[str], tmp_path: Path
) -> None:
    train = event_files[:4]  # 4 graphs over 3 ranks: the last step trains on 1
    graph = union_graph([load_graph(f).to_batch() for f in train])
    n_roots = int((torch.bincount(graph.edge_index.flatten()) > 0).sum())
    batch = next(b for b in range(64, n_roots) if n_roots % b == 2)  # last step: 2 roots, 3 ranks
    result = _torchrun(
        "train", 3, tmp_path, {"train": train, "val": event_files[4:], "shadow_batch": batch}
    )
    assert (
        "4 training graphs over 3 ranks: the last step of each epoch trains on 1" in result.stderr
    )
    assert "ShaDow: the last step of each epoch has 2 root(s) for 3 ranks" in result.stderr
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(3)]
    assert all(r["full"]["steps"] == 2 for r in ranks)
    assert all(r["shadow"]["steps"] == -(-n_roots // batch) for r in ranks)
    for mode in ("full", "shadow"):
        states = [torch.load(tmp_path / f"{mode}-rank{r}.pt") for r in range(3)]
        for name, value in states[0].items():
            assert all(torch.equal(value, s[name]) for s in states[1:]), (mode, name)
        assert len({r[mode]["val_auc"] for r in ranks}) == 1


if __name__ == "__main__":
    _worker(sys.argv[1], Path(sys.argv[2]), json.loads(sys.argv[3]))
