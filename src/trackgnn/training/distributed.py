"""Data-parallel training with one coalesced gradient all-reduce per optimizer step.

An Interaction GNN holds hundreds of small parameter tensors (8 iterations of edge and node MLPs
with LayerNorm). All-reducing them one by one pays the collective's latency hundreds of times per
step; packing every gradient into one flat buffer and reducing it once pays it once (paper
``scaling-gnns-shadow-sampling.md``, section III-D).

Lightning's ``DDPStrategy`` wraps the module in ``torch.nn.parallel.DistributedDataParallel``,
whose bucketed reducer all-reduces the gradients itself, and it only registers DDP communication
hooks on CUDA. :class:`CoalescedDDPStrategy` therefore keeps everything else of ``DDPStrategy``
(process-group set-up from torchrun / SLURM / Lightning's own launcher, the distributed sampler,
rank-0 broadcast of the initial parameters, barriers, ``reduce``) but does not wrap the module; it
averages the gradients itself in one all-reduce after the backward pass and before the optimizer
step, on CPU (gloo) and GPU (NCCL) alike.

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
from pytorch_lightning.overrides.distributed import _sync_module_states
from pytorch_lightning.strategies import DDPStrategy, SingleDeviceStrategy, Strategy
from torch.optim import Optimizer

from trackgnn.errors import ConfigError

__all__ = [
    "DEFAULT_TIMEOUT_S",
    "CoalescedDDPStrategy",
    "GradSyncStats",
    "LaunchEnvironment",
    "allreduce_gradients_coalesced",
    "allreduce_gradients_per_parameter",
    "detect_launch",
    "gradient_sync_stats",
    "is_rank_zero",
    "local_batch_size",
    "make_strategy",
    "trainer_kwargs",
]

#: Process-group timeout: a collective waiting longer than this for a dead or stuck rank fails
#: instead of hanging the job until the scheduler kills it.
DEFAULT_TIMEOUT_S = 300.0


# ---------------------------------------------------------------------------------------------
# Plain-torch gradient synchronisation
# ---------------------------------------------------------------------------------------------


def _distributed_ready() -> bool:
    return dist.is_available() and dist.is_initialized()


def _trainable_unique(params: Iterable[torch.Tensor]) -> list[torch.Tensor]:
    """Parameters that take gradients, each once, in first-seen order (identical on every rank)."""
    seen: set[int] = set()
    unique = []
    for param in params:
        if param.requires_grad and id(param) not in seen:
            seen.add(id(param))
            unique.append(param)
    return unique


def allreduce_gradients_coalesced(
    params: Iterable[torch.Tensor], group: dist.ProcessGroup | None = None
) -> int:
    """Average the gradients of ``params`` over the ranks of ``group`` with one all-reduce.

    All gradients are packed into one flat buffer, reduced with a single ``all_reduce`` and divided
    by the world size (parameters of mixed dtypes or devices get one buffer per kind; a model of
    one dtype on one device always gets exactly one). Afterwards each ``param.grad`` is a view
    into the reduced buffer, so nothing is copied back. A parameter whose gradient is ``None`` on
    some ranks counts as zero there; if it is ``None`` on every rank it stays ``None`` (like DDP's
    unused parameters). To know that without a second collective, one presence flag per tensor
    rides along in the same buffer.

    Every rank must pass the same parameters in the same order. Without an initialised process
    group (single-process training) there is nothing to average and nothing happens. Returns the
    number of ``all_reduce`` calls made (1 for a uniform dtype, 0 when there is nothing to reduce).
    """
    trainable = _trainable_unique(params)
    if not trainable or not _distributed_ready():
        return 0
    world_size = dist.get_world_size(group)
    by_kind: dict[tuple[torch.device, torch.dtype], list[torch.Tensor]] = {}
    for param in trainable:
        if param.grad is not None and param.grad.is_sparse:
            raise ValueError("allreduce_gradients_coalesced: sparse gradients are not supported")
        by_kind.setdefault((param.device, param.dtype), []).append(param)

    n_calls = 0
    for (device, dtype), group_params in by_kind.items():
        pieces = [
            p.grad.reshape(-1)
            if p.grad is not None
            else torch.zeros(p.numel(), dtype=dtype, device=device)
            for p in group_params
        ]
        present = [p.grad is not None for p in group_params]
        flags = torch.tensor(present, dtype=dtype, device=device)
        flat = torch.cat([*pieces, flags])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=group)
        n_calls += 1

        n_values = flat.numel() - len(group_params)
        grads_flat = flat[:n_values]
        # gloo has no AVG op; SUM then divide gives bit-identical results on every rank.
        grads_flat.div_(world_size)
        views = grads_flat.split([p.numel() for p in group_params])
        # Reading the flags back forces a device sync on GPU, so only do it when this rank lacks a
        # gradient (then another rank may or may not have one).
        if all(present):
            present_anywhere = present
        else:
            present_anywhere = (flat[n_values:] > 0).tolist()
        for param, view, keep in zip(group_params, views, present_anywhere, strict=True):
            param.grad = view.view_as(param) if keep else None
    return n_calls


def allreduce_gradients_per_parameter(
    params: Iterable[torch.Tensor], group: dist.ProcessGroup | None = None
) -> int:
    """Average gradients with one ``all_reduce`` per parameter tensor (the baseline).

    This is what a naive data-parallel loop does; it pays the collective latency once per tensor.
    Every rank must hold a gradient for the same parameters. Without an initialised process group
    nothing happens. Returns the number of calls made.
    """
    if not _distributed_ready():
        return 0
    world_size = dist.get_world_size(group)
    n_calls = 0
    for param in _trainable_unique(params):
        if param.grad is None:
            continue
        dist.all_reduce(param.grad, op=dist.ReduceOp.SUM, group=group)
        param.grad.div_(world_size)
        n_calls += 1
    return n_calls


# ---------------------------------------------------------------------------------------------
# Timing and counting
# ---------------------------------------------------------------------------------------------


@dataclass
class GradSyncStats:
    """Running record of gradient synchronisations, for logging ``allreduce_ms`` per step/epoch.

    ``last_ms`` is the wall time of the latest synchronisation (packing, the all-reduce and the
    division; on GPU bracketed by device synchronisation so the asynchronous NCCL call is counted).
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
    return sum(p.numel() * p.element_size() for p in _trainable_unique(module.parameters()))


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


class CoalescedDDPStrategy(DDPStrategy):
    """``DDPStrategy`` without the torch DDP wrapper; gradients averaged in one all-reduce per step.

    The synchronisation runs inside the optimizer closure, right after ``backward``: before gradient
    unscaling (AMP), ``on_before_optimizer_step`` and gradient clipping, so those see the averaged
    gradients and act identically on every rank. With gradient accumulation only the stepping batch
    synchronises. With manual optimization it runs in ``optimizer.step()``. A closure evaluated
    several times (LBFGS) synchronises each time, as it must.

    Buffers (e.g. BatchNorm running statistics) are broadcast from rank 0 once at set-up but not per
    step; the models of this package have none (they use LayerNorm).
    """

    strategy_name = "coalesced_ddp"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.grad_sync_stats = GradSyncStats()

    def configure_ddp(self) -> None:
        """Set up data parallelism without wrapping the module in torch DDP.

        Torch DDP would all-reduce every gradient in buckets during backward, a second
        synchronisation on top of ours. Instead every rank starts from rank 0's parameters.
        """
        assert isinstance(self.model, LightningModule)
        _sync_module_states(self.model)

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
        """Run the optimizer step with gradients averaged over all ranks first."""

        def closure_then_sync() -> Any:
            result = closure()
            self._synchronise_gradients(optimizer)
            return result

        return super().optimizer_step(optimizer, closure_then_sync, model, **kwargs)

    def _synchronise_gradients(self, optimizer: Optimizer) -> None:
        params = [p for group in optimizer.param_groups for p in group["params"]]
        trainable = _trainable_unique(params)
        on_cuda = self.root_device.type == "cuda"
        if on_cuda:
            # Exclude queued backward kernels from the measurement.
            torch.cuda.synchronize(self.root_device)
        start = time.perf_counter()
        n_calls = allreduce_gradients_coalesced(trainable)
        if on_cuda:
            # NCCL returns before the reduction finishes; wait so the time is the reduction's.
            torch.cuda.synchronize(self.root_device)
        elapsed_ms = (time.perf_counter() - start) * 1e3
        n_bytes = sum(p.numel() * p.element_size() for p in trainable)
        self.grad_sync_stats.record(elapsed_ms, n_calls, len(trainable), n_bytes)


def gradient_sync_stats(trainer: Trainer) -> GradSyncStats:
    """The trainer's gradient-synchronisation record (all zeros for a single process).

    Read it in ``on_before_optimizer_step`` or later to log the current step's ``allreduce_ms``.
    """
    strategy = trainer.strategy
    if isinstance(strategy, CoalescedDDPStrategy):
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
    :class:`CoalescedDDPStrategy` with gloo on CPU and NCCL on GPU and a process-group timeout of
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
    return CoalescedDDPStrategy(
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


def is_rank_zero() -> bool:
    """True on the process that should write files and log (global rank 0).

    Uses the process group once it exists, before that the launcher's environment (torchrun's
    ``RANK``, SLURM's ``SLURM_PROCID``, Lightning's child ``LOCAL_RANK`` / ``NODE_RANK``).
    """
    if _distributed_ready():
        return dist.get_rank() == 0
    if "RANK" in os.environ:
        return _env_int("RANK") == 0
    if _slurm_launched() and "SLURM_PROCID" in os.environ:
        return _env_int("SLURM_PROCID") == 0
    local = _env_int("LOCAL_RANK") if "LOCAL_RANK" in os.environ else 0
    node = _env_int("NODE_RANK") if "NODE_RANK" in os.environ else 0
    return local == 0 and node == 0
