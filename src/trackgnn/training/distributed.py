"""Data-parallel training: torch DDP with one gradient all-reduce per optimizer step.

An Interaction GNN holds hundreds of small parameter tensors (8 iterations of edge and node MLPs
with LayerNorm). All-reducing them one by one pays the collective's latency hundreds of times per
step; reducing them from one buffer pays it once (paper ``scaling-gnns-shadow-sampling.md``,
section III-D). torch's ``DistributedDataParallel`` does that when its bucket holds the whole
model: :class:`OneBucketDDPStrategy` is Lightning's ``DDPStrategy`` with the bucket cap set from
the model's size, gradients as views of the bucket, a static graph, and a communication hook that
counts and times the reduction (on CPU too, where Lightning registers no hooks).
``bench/allreduce.py`` measures it against a hand-written coalesced all-reduce (which this module
used to train with) and one all-reduce per tensor.

Launch modes: ``torchrun --nproc-per-node P`` (env:// rendezvous), SLURM ``srun`` (one task per
rank; Lightning's ``SLURMEnvironment``), a plain ``python`` process (Lightning starts the other
local ranks), and a single process (``world_size == 1``, no process group).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from pytorch_lightning import LightningModule, Trainer
from pytorch_lightning.strategies import DDPStrategy, SingleDeviceStrategy, Strategy
from torch.nn.parallel import DistributedDataParallel
from torch.optim import Optimizer

from trackgnn.errors import ConfigError

__all__ = [
    "DEFAULT_TIMEOUT_S",
    "AllReduceHookState",
    "GradSyncStats",
    "LaunchEnvironment",
    "OneBucketDDPStrategy",
    "detect_launch",
    "gradient_sync_stats",
    "local_batch_size",
    "make_strategy",
    "model_bytes",
    "one_bucket_ddp_kwargs",
    "timed_allreduce_hook",
    "trainer_kwargs",
]

#: Process-group timeout: a collective waiting longer than this for a dead or stuck rank fails
#: instead of hanging the job until the scheduler kills it.
DEFAULT_TIMEOUT_S = 300.0


def distributed_ready() -> bool:
    return dist.is_available() and dist.is_initialized()


def unique_trainable_parameters(params: Iterable[torch.Tensor]) -> list[torch.Tensor]:
    """Parameters that take gradients, each once, in first-seen order (identical on every rank)."""
    seen: set[int] = set()
    unique = []
    for param in params:
        if param.requires_grad and id(param) not in seen:
            seen.add(id(param))
            unique.append(param)
    return unique


# ---------------------------------------------------------------------------------------------
# Timing and counting
# ---------------------------------------------------------------------------------------------


@dataclass
class GradSyncStats:
    """Running record of gradient synchronisations, for logging ``allreduce_ms`` per step/epoch.

    One record per optimizer step; ``last_ms`` is the latest step's all-reduce time as
    :func:`timed_allreduce_hook` measures it, ``allreduce_calls`` counts DDP buckets reduced.
    """

    syncs: int = 0
    allreduce_calls: int = 0
    total_ms: float = 0.0
    last_ms: float = 0.0
    n_tensors: int = 0
    n_bytes: int = 0

    @property
    def mean_ms(self) -> float:
        """Mean synchronisation time per step (0 before the first step)."""
        return self.total_ms / self.syncs if self.syncs else 0.0

    def record(self, elapsed_ms: float, n_calls: int, n_tensors: int, n_bytes: int) -> None:
        """Add one synchronisation."""
        self.syncs += 1
        self.allreduce_calls += n_calls
        self.total_ms += elapsed_ms
        self.last_ms = elapsed_ms
        self.n_tensors = n_tensors
        self.n_bytes = n_bytes

    def reset(self) -> None:
        """Forget the counts (e.g. at the start of an epoch)."""
        self.syncs = self.allreduce_calls = self.n_tensors = self.n_bytes = 0
        self.total_ms = self.last_ms = 0.0


# ---------------------------------------------------------------------------------------------
# torch DDP: one bucket, a timed all-reduce hook
# ---------------------------------------------------------------------------------------------


def model_bytes(module: torch.nn.Module) -> int:
    """Bytes of the trainable parameters (what DDP's gradient buckets hold)."""
    return sum(
        p.numel() * p.element_size() for p in unique_trainable_parameters(module.parameters())
    )


def one_bucket_ddp_kwargs(module: torch.nn.Module) -> dict[str, Any]:
    """``DistributedDataParallel`` arguments that reduce all of ``module``'s gradients at once.

    A bucket cap above the model's size puts every gradient in one bucket (an explicit cap also
    lifts DDP's small first bucket to the same size), so a step issues one all-reduce. The
    gradients are views of that bucket (no copy in or out), and a static graph lets DDP skip the
    per-step search for unused parameters.
    """
    cap_mb = math.ceil(model_bytes(module) / 2**20) + 1
    return {"bucket_cap_mb": cap_mb, "gradient_as_bucket_view": True, "static_graph": True}


@dataclass
class AllReduceHookState:
    """State of :func:`timed_allreduce_hook`: the group and the reductions since the last step."""

    group: dist.ProcessGroup | None = None
    calls: int = 0
    elapsed_ms: float = 0.0
    n_tensors: int = 0
    n_bytes: int = 0

    def take(self) -> tuple[float, int, int, int]:
        """Return (ms, calls, tensors, bytes) since the last call and start counting afresh."""
        taken = (self.elapsed_ms, self.calls, self.n_tensors, self.n_bytes)
        self.calls = self.n_tensors = self.n_bytes = 0
        self.elapsed_ms = 0.0
        return taken


def timed_allreduce_hook(
    state: AllReduceHookState, bucket: dist.GradBucket
) -> torch.futures.Future[torch.Tensor]:
    """DDP communication hook: torch's averaging all-reduce, counted and timed in ``state``.

    The time runs from issuing the all-reduce to its completion (on GPU, NCCL completes the future
    once the reduction is queued on the stream, so there it measures the issue only).
    """
    buffer = bucket.buffer()
    start = time.perf_counter()
    buffer.div_(dist.get_world_size(state.group))
    work = dist.all_reduce(buffer, op=dist.ReduceOp.SUM, group=state.group, async_op=True)
    state.calls += 1
    state.n_tensors += len(bucket.gradients())
    state.n_bytes += buffer.numel() * buffer.element_size()

    def finished(fut: torch.futures.Future[list[torch.Tensor]]) -> torch.Tensor:
        state.elapsed_ms += (time.perf_counter() - start) * 1e3
        return fut.value()[0]

    return work.get_future().then(finished)


# DDP checks a hook's annotations against the real types; this module's are strings
# (``from __future__ import annotations``).
timed_allreduce_hook.__annotations__.update(
    bucket=dist.GradBucket,
    state=AllReduceHookState,
    **{"return": torch.futures.Future[torch.Tensor]},
)


# ---------------------------------------------------------------------------------------------
# Lightning strategy
# ---------------------------------------------------------------------------------------------


class OneBucketDDPStrategy(DDPStrategy):
    """Lightning's ``DDPStrategy``; each optimizer step reduces all gradients in one all-reduce.

    The bucket cap is set from the model's size when the model is wrapped (see
    :func:`one_bucket_ddp_kwargs`); :func:`timed_allreduce_hook` does the reduction and records
    it, and each optimizer step moves the record into ``grad_sync_stats`` right after the backward
    pass, before ``on_before_optimizer_step`` and gradient clipping (which see averaged
    gradients, as everywhere with DDP).
    """

    strategy_name = "one_bucket_ddp"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.grad_sync_stats = GradSyncStats()
        self._hook_state = AllReduceHookState()

    def configure_ddp(self) -> None:
        """Wrap the module in DDP with one bucket for all its gradients."""
        assert isinstance(self.model, LightningModule)
        self._ddp_kwargs.update(one_bucket_ddp_kwargs(self.model))
        super().configure_ddp()

    def _register_ddp_hooks(self) -> None:
        # Lightning registers hooks on CUDA only; gloo runs them too.
        assert isinstance(self.model, DistributedDataParallel)
        self.model.register_comm_hook(self._hook_state, timed_allreduce_hook)

    def set_world_ranks(self) -> None:
        """Set ranks; fail early when Trainer devices × num_nodes disagree with the launch."""
        super().set_world_ranks()
        env = self.cluster_environment
        expected = self.num_nodes * self.num_processes
        if env is not None and env.creates_processes_externally and env.world_size() != expected:
            raise ConfigError(
                f"world_size: the launcher started {env.world_size()} processes but the Trainer "
                f"expects num_nodes={self.num_nodes} x devices={self.num_processes} = {expected}; "
                "build the Trainer with trackgnn.training.distributed.trainer_kwargs()"
            )

    def optimizer_step(
        self,
        optimizer: Optimizer,
        closure: Callable[[], Any],
        model: LightningModule | torch.nn.Module | None = None,
        **kwargs: Any,
    ) -> Any:
        """Run the optimizer step, recording the gradient reduction of its backward pass."""

        def closure_then_record() -> Any:
            result = closure()
            elapsed_ms, calls, n_tensors, n_bytes = self._hook_state.take()
            self.grad_sync_stats.record(elapsed_ms, calls, n_tensors, n_bytes)
            return result

        return super().optimizer_step(optimizer, closure_then_record, model, **kwargs)


def gradient_sync_stats(trainer: Trainer) -> GradSyncStats:
    """The trainer's gradient-synchronisation record (all zeros for a single process).

    Read it in ``on_before_optimizer_step`` or later to log the current step's ``allreduce_ms``.
    """
    strategy = trainer.strategy
    if isinstance(strategy, OneBucketDDPStrategy):
        return strategy.grad_sync_stats
    return GradSyncStats()


# ---------------------------------------------------------------------------------------------
# Launch detection and construction helpers
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LaunchEnvironment:
    """How this process was started: ``launcher`` is ``torchrun``, ``slurm`` or ``local``."""

    launcher: str
    world_size: int
    num_nodes: int
    processes_per_node: int


def _env_int(name: str) -> int:
    value = os.environ.get(name, "")
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"{name}: expected an integer, got {value!r}") from None


def _slurm_launched() -> bool:
    # Mirrors Lightning's SLURMEnvironment.detect(): interactive allocations (job name bash or
    # interactive) start their processes some other way.
    return "SLURM_NTASKS" in os.environ and os.environ.get("SLURM_JOB_NAME") not in (
        "bash",
        "interactive",
    )


def detect_launch(world_size: int) -> LaunchEnvironment:
    """Work out the launcher and node layout, checking it matches the requested ``world_size``.

    torchrun wins over SLURM (torchrun may run inside a SLURM allocation), as in Lightning.
    """
    if dist.is_available() and dist.is_torchelastic_launched():
        launched = _env_int("WORLD_SIZE")
        per_node = _env_int("LOCAL_WORLD_SIZE") if "LOCAL_WORLD_SIZE" in os.environ else launched
        launcher = "torchrun"
    elif _slurm_launched():
        launched = _env_int("SLURM_NTASKS")
        nodes = _env_int("SLURM_NNODES") if "SLURM_NNODES" in os.environ else 1
        if launched % nodes:
            raise ConfigError(
                f"SLURM_NTASKS: {launched} tasks do not split evenly over {nodes} nodes"
            )
        per_node = launched // nodes
        launcher = "slurm"
    else:
        return LaunchEnvironment("local", world_size, 1, world_size)

    if launched != world_size:
        raise ConfigError(
            f"world_size: the config asks for {world_size} processes "
            f"but {launcher} started {launched}"
        )
    if per_node < 1 or launched % per_node:
        raise ConfigError(
            f"world_size: {launched} {launcher} processes do not split into nodes of {per_node}"
        )
    return LaunchEnvironment(launcher, launched, launched // per_node, per_node)


def _check_args(world_size: int, device: str | torch.device, timeout_s: float) -> torch.device:
    if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
        raise ConfigError(f"world_size: must be a positive integer, got {world_size!r}")
    if not (isinstance(timeout_s, int | float) and math.isfinite(timeout_s) and timeout_s > 0):
        raise ConfigError(f"timeout_s: must be a positive number of seconds, got {timeout_s!r}")
    try:
        torch_device = torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError(f"device: not a torch device: {device!r}") from None
    if torch_device.type not in ("cpu", "cuda"):
        raise ConfigError(f"device: must be cpu or cuda, got {device!r}")
    if torch_device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device: {device!r} requested but CUDA is not available")
    return torch_device


def _local_devices(device: torch.device, processes_per_node: int) -> list[torch.device]:
    """One device per local rank; Lightning picks ``parallel_devices[local_rank]``."""
    if device.type == "cpu":
        return [torch.device("cpu")] * processes_per_node
    visible = torch.cuda.device_count()
    if visible >= processes_per_node:
        return [torch.device("cuda", i) for i in range(processes_per_node)]
    if visible == 1:
        # SLURM with --gpus-per-task (or similar binding) shows each task only its own GPU.
        return [torch.device("cuda", 0)] * processes_per_node
    raise ConfigError(
        f"world_size: {processes_per_node} processes per node but only {visible} GPUs are visible"
    )


def make_strategy(
    world_size: int, device: str | torch.device, *, timeout_s: float = DEFAULT_TIMEOUT_S
) -> Strategy:
    """The Lightning strategy for ``world_size`` processes on ``device`` (``cpu`` or ``cuda``).

    ``world_size == 1`` gives a plain single-device strategy (no process group); otherwise a
    :class:`OneBucketDDPStrategy` with gloo on CPU and NCCL on GPU and a process-group timeout of
    ``timeout_s``. For multi-node runs the Trainer also needs ``num_nodes``: prefer
    :func:`trainer_kwargs`, which supplies both.
    """
    torch_device = _check_args(world_size, device, timeout_s)
    if world_size == 1:
        if dist.is_available() and dist.is_torchelastic_launched():
            detect_launch(1)  # refuse N torchrun copies that would each train alone
        if torch_device.type == "cuda" and torch_device.index is None:
            torch_device = torch.device("cuda", 0)
        return SingleDeviceStrategy(device=torch_device)
    launch = detect_launch(world_size)
    return OneBucketDDPStrategy(
        parallel_devices=_local_devices(torch_device, launch.processes_per_node),
        process_group_backend="nccl" if torch_device.type == "cuda" else "gloo",
        timeout=timedelta(seconds=timeout_s),
    )


def trainer_kwargs(
    world_size: int, device: str | torch.device, *, timeout_s: float = DEFAULT_TIMEOUT_S
) -> dict[str, Any]:
    """Keyword arguments for ``Trainer`` (accelerator, devices, num_nodes, strategy).

    Use as ``Trainer(**trainer_kwargs(P, "cpu"), max_epochs=...)``.
    """
    torch_device = _check_args(world_size, device, timeout_s)
    strategy = make_strategy(world_size, torch_device, timeout_s=timeout_s)
    num_nodes = detect_launch(world_size).num_nodes if world_size > 1 else 1
    # The strategy carries the exact per-node device list; "auto" keeps Lightning from re-checking
    # a GPU count that a per-task GPU binding makes look too small.
    devices: int | str = 1
    if isinstance(strategy, DDPStrategy):
        devices = "auto" if torch_device.type == "cuda" else len(strategy.parallel_devices)
    return {
        "accelerator": torch_device.type,
        "devices": devices,
        "num_nodes": num_nodes,
        "strategy": strategy,
    }


def local_batch_size(global_batch: int, world_size: int) -> int:
    """Per-process share of a global batch (the paper's b/P), which must divide evenly.

    Equal shares keep every rank at the same number of steps, so no rank waits in an all-reduce
    that another rank never reaches.
    """
    if global_batch < 1 or world_size < 1 or global_batch % world_size:
        raise ConfigError(
            f"batch_size: global batch {global_batch} does not split evenly over "
            f"{world_size} processes"
        )
    return global_batch // world_size
