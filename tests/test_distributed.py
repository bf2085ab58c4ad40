"""Data-parallel training with torch DDP and one gradient all-reduce per step.

The multi-process tests start two real gloo ranks (through torchrun, and through a simulated SLURM
srun) that run this file as a script (see ``_worker``), train a many-tensor model larger than DDP's
default first bucket through a Lightning Trainer, and write what they saw to files the tests then
check against a single-process reference trained on the union of both ranks' data.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
import torch
from torch import nn

import trackgnn.training.distributed as distributed
from trackgnn.errors import ConfigError
from trackgnn.process import process_rank
from trackgnn.training.distributed import (
    GradSyncStats,
    OneBucketDDPStrategy,
    detect_launch,
    gradient_sync_stats,
    local_batch_size,
    make_strategy,
    model_bytes,
    one_bucket_ddp_kwargs,
    trainer_kwargs,
)

# Lightning warns where an srun binary exists but this process was not started by it; these
# in-process Trainers are not meant to be.
pytestmark = pytest.mark.filterwarnings("ignore:The `srun` command is available")

WORLD_SIZE = 2
N_STEPS = 4
BATCH_PER_RANK = 8
IN_DIM = 6
HIDDEN = 640  # 4.7 MiB of parameters: torch DDP's defaults would reduce them in 2 buckets
LR = 0.05
MOMENTUM = 0.9
CLIP_NORM = 0.2  # small enough to clip every step: clipping must act on the averaged gradient
INIT_SEED = 1000  # rank r initialises with INIT_SEED + r, so only a broadcast makes replicas equal
TRAIN_TIMEOUT_S = 60.0
HANG_TIMEOUT_S = (
    6.0  # process-group timeout of the torchrun run, whose rank 1 then stops responding
)

LAUNCH_ENV_VARS = (
    "TORCHELASTIC_RUN_ID",
    "RANK",
    "WORLD_SIZE",
    "LOCAL_RANK",
    "LOCAL_WORLD_SIZE",
    "GROUP_RANK",
    "NODE_RANK",
    "SLURM_NTASKS",
    "SLURM_NNODES",
    "SLURM_PROCID",
    "SLURM_LOCALID",
    "SLURM_NODEID",
    "SLURM_JOB_NAME",
    "SLURM_NTASKS_PER_NODE",
)


def _make_net(seed: int) -> nn.Sequential:
    """Four Linear + LayerNorm blocks and a head: 18 parameter tensors."""
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    width = IN_DIM
    for _ in range(4):
        layers += [nn.Linear(width, HIDDEN), nn.LayerNorm(HIDDEN), nn.Tanh()]
        width = HIDDEN
    layers.append(nn.Linear(HIDDEN, 1))
    return nn.Sequential(*layers)


def _dataset() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(7)
    n = WORLD_SIZE * BATCH_PER_RANK * N_STEPS
    x = torch.randn(n, IN_DIM, generator=generator)
    y = torch.sin(x.sum(dim=1, keepdim=True)) + 0.1 * torch.randn(n, 1, generator=generator)
    return x, y


def _reference_state(step_indices: list[list[torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Single process from rank 0's init; step k's batch is the union of the ranks' step-k batches.

    Gradients are clipped by norm after averaging, as the strategy must order it.

    The loss is the mean over the union, which equals the average of the ranks' mean losses, so its
    gradient is what correct data-parallel averaging produces.
    """
    net = _make_net(INIT_SEED)
    optimizer = torch.optim.SGD(net.parameters(), lr=LR, momentum=MOMENTUM)
    x, y = _dataset()
    for per_rank in zip(*step_indices, strict=True):
        batch = torch.cat(per_rank)
        optimizer.zero_grad()
        nn.functional.mse_loss(net(x[batch]), y[batch]).backward()
        norm = nn.utils.clip_grad_norm_(net.parameters(), CLIP_NORM)
        assert norm > CLIP_NORM, "the reference must clip for the comparison to test clipping"
        optimizer.step()
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


# ---------------------------------------------------------------------------------------------
# Worker (this file run as a script by torchrun or the simulated srun)
# ---------------------------------------------------------------------------------------------


def _worker(out_dir: Path, launcher: str) -> None:
    import pytorch_lightning as pl
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel
    from torch.utils.data import DataLoader, TensorDataset

    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    rank = int(os.environ["RANK"] if launcher == "torchrun" else os.environ["SLURM_PROCID"])
    timeout_s = HANG_TIMEOUT_S if launcher == "torchrun" else TRAIN_TIMEOUT_S

    # Count every all-reduce issued through torch.distributed (the strategy's DDP hook looks it
    # up at call time, so this wrapper sees its calls).
    n_allreduce = [0]
    real_all_reduce = dist.all_reduce

    def counting_all_reduce(*args, **kwargs):
        n_allreduce[0] += 1
        return real_all_reduce(*args, **kwargs)

    dist.all_reduce = counting_all_reduce

    class Regressor(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = _make_net(INIT_SEED + rank)
            self.seen: list[torch.Tensor] = []

        def training_step(self, batch, batch_idx):
            x, y, index = batch
            self.seen.append(index.clone())
            return nn.functional.mse_loss(self.net(x), y)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=LR, momentum=MOMENTUM)

    class CountPerBatch(pl.Callback):
        def __init__(self) -> None:
            self.per_batch: list[int] = []
            self.sync_ms_seen: list[float] = []

        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            # Lightning unwraps the module at teardown: look while training.
            self.wrapped = isinstance(trainer.strategy.model, DistributedDataParallel)
            self.start = n_allreduce[0]

        def on_before_optimizer_step(self, trainer, module, optimizer):
            self.sync_ms_seen.append(gradient_sync_stats(trainer).last_ms)

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            self.per_batch.append(n_allreduce[0] - self.start)

    counter = CountPerBatch()
    module = Regressor()
    trainer = pl.Trainer(
        **trainer_kwargs(WORLD_SIZE, "cpu", timeout_s=timeout_s),
        max_steps=N_STEPS,
        gradient_clip_val=CLIP_NORM,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[counter],
    )
    x, y = _dataset()
    dataset = TensorDataset(x, y, torch.arange(len(x)))
    trainer.fit(module, DataLoader(dataset, batch_size=BATCH_PER_RANK))
    stats = gradient_sync_stats(trainer)
    result = {
        "rank": rank,
        "world_size": dist.get_world_size(),
        "is_rank_zero": process_rank() == 0,
        "state": {k: v.detach().clone() for k, v in module.net.state_dict().items()},
        "step_indices": module.seen,
        "per_batch_allreduce": counter.per_batch,
        "sync_ms_seen": counter.sync_ms_seen,
        "stats": vars(stats).copy(),
        "wrapped_in_ddp": counter.wrapped,
        "n_params": len(list(module.parameters())),
        "n_param_bytes": sum(p.numel() * p.element_size() for p in module.parameters()),
    }

    torch.save(result, out_dir / f"rank{rank}.pt")

    if launcher != "torchrun":
        dist.barrier()
        dist.destroy_process_group()
        return
    # A rank that stops responding must not hang the others: rank 1 goes silent, rank 0's next
    # all-reduce has to fail after the configured timeout.
    done_flag = out_dir / "hang_checked"
    if rank == 1:
        deadline = time.monotonic() + 10 * HANG_TIMEOUT_S
        while not done_flag.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        os._exit(0)
    start = time.monotonic()
    try:
        real_all_reduce(torch.ones(1))
        outcome = "returned"
    except RuntimeError as error:  # gloo raises DistBackendError, a RuntimeError
        outcome = f"raised {type(error).__name__}"
    torch.save({"outcome": outcome, "elapsed_s": time.monotonic() - start}, out_dir / "hang.pt")
    done_flag.touch()
    os._exit(0)


# ---------------------------------------------------------------------------------------------
# Launch helpers
# ---------------------------------------------------------------------------------------------


def _child_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_ENV_VARS}
    src = str(Path(distributed.__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
    env["OMP_NUM_THREADS"] = "1"
    env["PYTHONHASHSEED"] = "0"
    return env


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _check_ok(returncodes: list[int], logs: list[str]) -> None:
    if any(rc != 0 for rc in returncodes):
        pytest.fail(f"worker failed with {returncodes}:\n" + "\n".join(s[-4000:] for s in logs))


def _load_ranks(out_dir: Path) -> list[dict]:
    return [torch.load(out_dir / f"rank{r}.pt", weights_only=True) for r in range(WORLD_SIZE)]


def _slurm_task_env(rank: int, port: int) -> dict[str, str]:
    """What srun --ntasks-per-node 2 gives each task on one node."""
    env = _child_env()
    env.update(
        SLURM_NTASKS=str(WORLD_SIZE),
        SLURM_NNODES="1",
        SLURM_NTASKS_PER_NODE=str(WORLD_SIZE),
        SLURM_PROCID=str(rank),
        SLURM_LOCALID=str(rank),
        SLURM_NODEID="0",
        SLURM_JOB_NAME="trackgnn-test",
        SLURM_JOB_ID="4242",
        SLURM_NODELIST="localhost",
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    return env


@pytest.fixture(scope="module")
def launches(tmp_path_factory) -> dict[str, Path]:
    """Run the torchrun launch and the simulated srun launch side by side (they overlap the
    torchrun run's deliberate timeout wait); return their output folders."""
    out = {name: tmp_path_factory.mktemp(name) for name in ("torchrun", "slurm")}
    torchrun_cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    torchrun_cmd += [
        "--nproc-per-node",
        str(WORLD_SIZE),
        __file__,
        str(out["torchrun"]),
        "torchrun",
    ]
    jobs = [(torchrun_cmd, _child_env(), out["torchrun"] / "log.txt")]
    port = _free_port()
    for rank in range(WORLD_SIZE):
        cmd = [sys.executable, __file__, str(out["slurm"]), "slurm"]
        jobs.append((cmd, _slurm_task_env(rank, port), out["slurm"] / f"log{rank}.txt"))
    procs = []
    try:
        for cmd, env, log in jobs:
            with open(log, "w") as log_file:
                procs.append(
                    subprocess.Popen(cmd, env=env, stdout=log_file, stderr=subprocess.STDOUT)
                )
        for proc in procs:
            proc.wait(timeout=240)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    _check_ok([proc.returncode for proc in procs], [log.read_text() for _, _, log in jobs])
    return out


def _assert_trained_like_union(ranks: list[dict]) -> None:
    """(a) bit-identical replicas, (b) one all-reduce per step, (c) equals union training."""
    state0, state1 = ranks[0]["state"], ranks[1]["state"]
    for name in state0:
        assert torch.equal(state0[name], state1[name]), f"replicas differ in {name}"
    for result in ranks:
        assert result["world_size"] == WORLD_SIZE
        assert result["is_rank_zero"] == (result["rank"] == 0)
        assert result["wrapped_in_ddp"]
        assert result["per_batch_allreduce"] == [1] * N_STEPS
        stats = result["stats"]
        assert stats["syncs"] == N_STEPS
        assert stats["allreduce_calls"] == N_STEPS
        assert stats["n_tensors"] == result["n_params"] == 18
        assert stats["n_bytes"] == result["n_param_bytes"]
        assert stats["total_ms"] > 0
        # The current step's time is readable in on_before_optimizer_step.
        assert len(result["sync_ms_seen"]) == N_STEPS and min(result["sync_ms_seen"]) > 0
    # Lightning's distributed sampler dealt each rank its own share of the data.
    seen = [torch.cat(result["step_indices"]) for result in ranks]
    assert all(len(indices) == N_STEPS * BATCH_PER_RANK for indices in seen)
    assert torch.equal(torch.cat(seen).sort().values, torch.arange(len(_dataset()[0])))
    reference = _reference_state([result["step_indices"] for result in ranks])
    initial = _make_net(INIT_SEED).state_dict()
    for name, expected in reference.items():
        torch.testing.assert_close(state0[name], expected, rtol=1e-5, atol=1e-6)
    assert any(not torch.allclose(state0[k], initial[k]) for k in initial), "nothing trained"


def test_torchrun_two_ranks_train_like_one_process_on_the_union(launches):
    _assert_trained_like_union(_load_ranks(launches["torchrun"]))


def test_stuck_rank_fails_the_others_after_the_timeout(launches):
    hang = torch.load(launches["torchrun"] / "hang.pt", weights_only=True)
    assert hang["outcome"].startswith("raised"), hang
    assert 0.5 * HANG_TIMEOUT_S <= hang["elapsed_s"] <= HANG_TIMEOUT_S + 20, hang


def test_slurm_srun_two_tasks_train_like_one_process_on_the_union(launches):
    _assert_trained_like_union(_load_ranks(launches["slurm"]))


# ---------------------------------------------------------------------------------------------
# In-process checks of the helpers (no process group)
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def clean_env(monkeypatch):
    for name in LAUNCH_ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def _fake_torchrun(monkeypatch, world: int, local_world: int, rank: int) -> None:
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "test")
    monkeypatch.setenv("WORLD_SIZE", str(world))
    monkeypatch.setenv("LOCAL_WORLD_SIZE", str(local_world))
    monkeypatch.setenv("RANK", str(rank))
    monkeypatch.setenv("LOCAL_RANK", str(rank % local_world))
    monkeypatch.setenv("GROUP_RANK", str(rank // local_world))
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "29500")


def test_make_strategy_single_process_and_local_multi_process(clean_env):
    from pytorch_lightning import Trainer

    single = make_strategy(1, "cpu")
    assert type(single).__name__ == "SingleDeviceStrategy"
    assert single.root_device == torch.device("cpu")
    trainer = Trainer(**trainer_kwargs(1, "cpu"), logger=False, enable_progress_bar=False)
    assert trainer.world_size == 1
    assert gradient_sync_stats(trainer) == GradSyncStats()  # logs allreduce_ms = 0

    strategy = make_strategy(2, "cpu", timeout_s=42)
    assert isinstance(strategy, OneBucketDDPStrategy)
    assert strategy.parallel_devices == [torch.device("cpu")] * 2
    assert strategy.process_group_backend == "gloo"
    assert strategy._timeout == timedelta(seconds=42)
    kwargs = trainer_kwargs(2, "cpu")
    assert (kwargs["accelerator"], kwargs["devices"], kwargs["num_nodes"]) == ("cpu", 2, 1)
    assert kwargs["strategy"]._timeout == timedelta(seconds=distributed.DEFAULT_TIMEOUT_S)


@pytest.mark.parametrize(
    ("world_size", "device", "timeout_s", "key"),
    [
        (0, "cpu", 10.0, "world_size"),
        ("2", "cpu", 10.0, "world_size"),
        (2, "tpu", 10.0, "device"),
        (2, "cpu", 0.0, "timeout_s"),
        (2, "cpu", float("nan"), "timeout_s"),
    ],
)
def test_make_strategy_rejects_bad_arguments(clean_env, world_size, device, timeout_s, key):
    with pytest.raises(ConfigError, match=rf"^{key}: "):
        make_strategy(world_size, device, timeout_s=timeout_s)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA message")
def test_make_strategy_refuses_cuda_without_cuda(clean_env):
    with pytest.raises(ConfigError, match=r"^device: .*CUDA is not available"):
        make_strategy(2, "cuda")


def test_detect_launch_torchrun_multi_node_and_mismatch(clean_env):
    _fake_torchrun(clean_env, world=4, local_world=2, rank=2)
    launch = detect_launch(4)
    assert (launch.launcher, launch.num_nodes, launch.processes_per_node) == ("torchrun", 2, 2)
    with pytest.raises(ConfigError, match=r"^world_size: .*asks for 2 .*torchrun started 4"):
        detect_launch(2)
    # A single-process config under a multi-process torchrun would train 4 independent copies.
    with pytest.raises(ConfigError, match=r"^world_size: "):
        make_strategy(1, "cpu")


def test_detect_launch_slurm_nodes(clean_env):
    clean_env.setenv("SLURM_NTASKS", "8")
    clean_env.setenv("SLURM_NNODES", "2")
    launch = detect_launch(8)
    assert (launch.launcher, launch.num_nodes, launch.processes_per_node) == ("slurm", 2, 4)
    clean_env.setenv("SLURM_NTASKS", "3")
    with pytest.raises(ConfigError, match=r"^SLURM_NTASKS: "):
        detect_launch(3)
    # An interactive allocation does not launch the ranks itself.
    clean_env.setenv("SLURM_JOB_NAME", "interactive")
    assert detect_launch(3).launcher == "local"


def test_trainer_gets_ranks_from_torchrun_and_refuses_a_mismatched_layout(clean_env):
    from lightning_utilities.core.rank_zero import rank_zero_only as utils_rank_zero_only
    from pytorch_lightning import Trainer
    from pytorch_lightning.utilities.rank_zero import rank_zero_only

    # The Trainer records the fake rank globally; restore it so later tests still log.
    clean_env.setattr(rank_zero_only, "rank", getattr(rank_zero_only, "rank", 0))
    clean_env.setattr(utils_rank_zero_only, "rank", getattr(utils_rank_zero_only, "rank", 0))
    _fake_torchrun(clean_env, world=4, local_world=2, rank=3)
    trainer = Trainer(**trainer_kwargs(4, "cpu"), logger=False, enable_progress_bar=False)
    assert (trainer.world_size, trainer.num_nodes, trainer.global_rank) == (4, 2, 3)
    assert trainer.local_rank == 1
    # A strategy handed to a Trainer without num_nodes would shard data for 2 ranks, not 4.
    with pytest.raises(ConfigError, match=r"^world_size: the launcher started 4"):
        Trainer(strategy=make_strategy(4, "cpu"), accelerator="cpu", devices=2, logger=False)


def test_process_rank_follows_the_launcher(clean_env):
    assert process_rank() == 0
    clean_env.setenv("SLURM_NTASKS", "2")
    clean_env.setenv("SLURM_PROCID", "1")
    assert process_rank() == 1
    clean_env.setenv("RANK", "0")  # torchrun inside a SLURM allocation: torchrun's rank wins
    assert process_rank() == 0
    clean_env.setenv("RANK", "3")
    assert process_rank() == 3


def test_lightning_children_in_an_interactive_allocation_are_not_rank_zero(clean_env):
    # salloc's shell exports SLURM_PROCID=0; Lightning's local launcher adds only LOCAL_RANK.
    clean_env.setenv("SLURM_PROCID", "0")
    clean_env.setenv("LOCAL_RANK", "1")
    assert process_rank() == 1
    clean_env.setenv("LOCAL_RANK", "0")
    assert process_rank() == 0
    clean_env.setenv("LOCAL_RANK", "not-a-number")  # never raises: logging asks for the rank
    assert process_rank() == 0


def test_local_batch_size_splits_the_global_batch_evenly():
    assert local_batch_size(256, 4) == 64
    assert local_batch_size(256, 1) == 256
    with pytest.raises(ConfigError, match=r"^batch_size: global batch 256 .* 3 processes"):
        local_batch_size(256, 3)


def test_one_bucket_holds_the_whole_model_where_ddp_defaults_would_split_it():
    net = _make_net(0)
    size = model_bytes(net)
    # Above DDP's default first bucket (1 MiB): the launches above test a real split avoided.
    assert size > 2**20
    kwargs = one_bucket_ddp_kwargs(net)
    assert kwargs["bucket_cap_mb"] * 2**20 >= size
    assert kwargs["gradient_as_bucket_view"] and kwargs["static_graph"]


def test_grad_sync_stats_record_and_reset():
    stats = GradSyncStats()
    assert stats.mean_ms == 0.0
    stats.record(2.0, 1, 10, 400)
    stats.record(4.0, 1, 10, 400)
    assert (stats.syncs, stats.allreduce_calls, stats.last_ms, stats.mean_ms) == (2, 2, 4.0, 3.0)
    stats.reset()
    assert (stats.syncs, stats.total_ms, stats.n_bytes) == (0, 0.0, 0)


if __name__ == "__main__":
    _worker(Path(sys.argv[1]), sys.argv[2])
