"""Data-parallel training step: per-parameter all-reduce, one coalesced all-reduce, torch DDP.

Two gloo processes (``--nproc``), one thread each, train the package's Interaction GNN
(``trackgnn.models.interaction_gnn``: 8 iterations, 2-layer MLPs with LayerNorm, concatenated
skips) on a synthetic graph per rank (``--nodes``, ``--edges``) at each ``--hidden`` size. One step
is forward, loss, backward, gradient averaging and an AdamW step; three replicas of the model (same
initial weights) take turns, one per mode, interleaved repetition by repetition (the order
alternates) after untimed warm-up steps:

* ``per_parameter``: backward, then one ``all_reduce`` per parameter tensor;
* ``coalesced``: backward, then ``allreduce_gradients_coalesced`` (one flat buffer, one call;
  the hand-written strategy trackgnn trained with before this measurement);
* ``torch_ddp``: ``DistributedDataParallel`` as Lightning's ``DDPStrategy`` builds it for
  training (``one_bucket_ddp_kwargs``: one bucket, gradients as bucket views, static graph), its
  bucket reduced by ``timed_allreduce_hook`` during backward.

Ranks meet at a barrier before each timed step. ``step_ms`` is the whole step; ``sync_ms`` the
gradient averaging (for ``torch_ddp`` the hook's time from issuing the all-reduce to its
completion, which may overlap the end of backward).

Output (rank 0, stdout): one JSON line per step with ``mode``, ``sync_ms``, ``step_ms``,
``allreduce_calls``, ``n_tensors``, ``n_bytes``; then per hidden size one ``summary`` line with the
median ``sync_ms`` and ``step_ms`` and the fastest ``step_ms`` of each mode, the ratios of the
medians to ``torch_ddp``'s (above 1: slower than torch DDP) and the median of the per-repetition
step ratios (``_paired``). ``--modes`` measures a subset.

    python bench/allreduce.py --quick     # about a minute
    python bench/allreduce.py             # more repetitions
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import sys
import time
from collections.abc import Callable, Iterable
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from trackgnn.models.interaction_gnn import InteractionGNN
from trackgnn.training.distributed import (
    AllReduceHookState,
    distributed_ready,
    model_bytes,
    one_bucket_ddp_kwargs,
    timed_allreduce_hook,
    unique_trainable_parameters,
)

NODE_FEATURES = 12  # r, phi, z, eta + cell-cluster shape features
MODES = ("per_parameter", "coalesced", "torch_ddp")


# The two baselines below are the package's former gradient averaging (trackgnn trains with
# torch DDP since this benchmark measured it faster); they live on here to be compared.


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
    trainable = unique_trainable_parameters(params)
    if not trainable or not distributed_ready():
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
    if not distributed_ready():
        return 0
    world_size = dist.get_world_size(group)
    n_calls = 0
    for param in unique_trainable_parameters(params):
        if param.grad is None:
            continue
        dist.all_reduce(param.grad, op=dist.ReduceOp.SUM, group=group)
        param.grad.div_(world_size)
        n_calls += 1
    return n_calls


def _graph(rank: int, n_nodes: int, n_edges: int) -> tuple[torch.Tensor, ...]:
    """Random node and edge features, edges and labels; each rank has its own (data parallel)."""
    gen = torch.Generator().manual_seed(100 + rank)
    x = torch.randn(n_nodes, NODE_FEATURES, generator=gen)
    edge_index = torch.randint(0, n_nodes, (2, n_edges), generator=gen)
    edge_attr = torch.randn(n_edges, 6, generator=gen)
    y = (torch.rand(n_edges, generator=gen) < 0.3).float()
    return x, edge_attr, edge_index, y


class _Replica:
    """One model and optimizer, and how its gradients are averaged."""

    def __init__(self, mode: str, hidden: int) -> None:
        torch.manual_seed(0)
        self.mode = mode
        self.model: nn.Module = InteractionGNN(NODE_FEATURES, hidden=hidden)
        self.params = list(self.model.parameters())
        self.hook_state = AllReduceHookState()
        self.sync: Callable[[list[nn.Parameter]], int] | None = None
        if mode == "torch_ddp":
            ddp = DistributedDataParallel(self.model, **one_bucket_ddp_kwargs(self.model))
            ddp.register_comm_hook(self.hook_state, timed_allreduce_hook)
            self.model = ddp
        elif mode == "coalesced":
            self.sync = allreduce_gradients_coalesced
        else:
            self.sync = allreduce_gradients_per_parameter
        self.optimizer = torch.optim.AdamW(self.params, lr=1e-4)

    def step(self, graph: tuple[torch.Tensor, ...]) -> tuple[float, float, int]:
        """One timed training step: (step_ms, sync_ms, all-reduce calls)."""
        x, edge_attr, edge_index, y = graph
        self.optimizer.zero_grad(set_to_none=True)
        self.hook_state.take()
        dist.barrier()
        start = time.perf_counter()
        loss = F.binary_cross_entropy_with_logits(self.model(x, edge_attr, edge_index), y)
        loss.backward()
        if self.sync is None:
            sync_ms, calls, _, _ = self.hook_state.take()
        else:
            sync_start = time.perf_counter()
            calls = self.sync(self.params)
            sync_ms = (time.perf_counter() - sync_start) * 1e3
        self.optimizer.step()
        return (time.perf_counter() - start) * 1e3, sync_ms, calls


def _summary(
    modes: list[str], steps: dict[str, list[float]], syncs: dict[str, list[float]]
) -> dict[str, object]:
    """Medians and fastest steps per mode; ratios of each mode to torch DDP (above 1: slower)."""
    out: dict[str, object] = {"bench": "allreduce", "summary": True}
    for mode in modes:
        out[f"median_sync_ms_{mode}"] = round(statistics.median(syncs[mode]), 3)
        out[f"median_step_ms_{mode}"] = round(statistics.median(steps[mode]), 3)
        # Load from other processes only adds time: the fastest step is the least disturbed.
        out[f"min_step_ms_{mode}"] = round(min(steps[mode]), 3)
    if "torch_ddp" in modes:
        ddp_step, ddp_sync = steps["torch_ddp"], syncs["torch_ddp"]
        for mode in modes:
            if mode == "torch_ddp":
                continue
            ratio = statistics.median(steps[mode]) / statistics.median(ddp_step)
            out[f"step_ratio_{mode}_to_torch_ddp"] = round(ratio, 3)
            # Paired by repetition (neighbouring steps share the machine's load).
            paired = statistics.median(a / b for a, b in zip(steps[mode], ddp_step, strict=True))
            out[f"step_ratio_{mode}_to_torch_ddp_paired"] = round(paired, 3)
            ratio = statistics.median(syncs[mode]) / statistics.median(ddp_sync)
            out[f"sync_ratio_{mode}_to_torch_ddp"] = round(ratio, 3)
    if {"per_parameter", "coalesced"} <= set(modes):
        ratio = statistics.median(syncs["per_parameter"]) / statistics.median(syncs["coalesced"])
        out["sync_ratio_per_parameter_to_coalesced"] = round(ratio, 3)
    return out


def _worker(
    rank: int,
    world_size: int,
    port: int,
    hiddens: list[int],
    reps: int,
    warmup: int,
    n_nodes: int,
    n_edges: int,
    modes: list[str],
) -> None:
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", rank=rank, world_size=world_size, timeout=timedelta(seconds=300)
    )
    graph = _graph(rank, n_nodes, n_edges)
    for hidden in hiddens:
        replicas = {mode: _Replica(mode, hidden) for mode in modes}
        n_tensors = len(replicas[modes[0]].params)
        n_bytes = model_bytes(replicas[modes[0]].model)
        for _ in range(warmup):
            for replica in replicas.values():
                replica.step(graph)
        steps: dict[str, list[float]] = {mode: [] for mode in modes}
        syncs: dict[str, list[float]] = {mode: [] for mode in modes}
        for rep in range(reps):
            for mode in modes if rep % 2 == 0 else reversed(modes):
                step_ms, sync_ms, calls = replicas[mode].step(graph)
                steps[mode].append(step_ms)
                syncs[mode].append(sync_ms)
                if rank == 0:
                    line = {
                        "bench": "allreduce",
                        "mode": mode,
                        "rep": rep,
                        "sync_ms": round(sync_ms, 4),
                        "step_ms": round(step_ms, 4),
                        "allreduce_calls": calls,
                        "n_tensors": n_tensors,
                        "n_bytes": n_bytes,
                        "hidden": hidden,
                        "world_size": world_size,
                    }
                    print(json.dumps(line), flush=True)
        if rank == 0:
            print(
                json.dumps(
                    _summary(modes, steps, syncs)
                    | {
                        "hidden": hidden,
                        "reps": reps,
                        "nodes": n_nodes,
                        "edges": n_edges,
                        "n_tensors": n_tensors,
                        "n_bytes": n_bytes,
                        "world_size": world_size,
                        "backend": "gloo",
                        "torch_threads": torch.get_num_threads(),
                        "torch": torch.__version__,
                    }
                ),
                flush=True,
            )
    dist.barrier()
    dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few repetitions, about a minute")
    parser.add_argument("--nproc", type=int, default=2, help="gloo processes (default 2)")
    parser.add_argument(
        "--hidden", type=int, nargs="+", default=[64, 128], help="hidden sizes (default 64 128)"
    )
    parser.add_argument("--nodes", type=int, default=500, help="graph nodes per rank")
    parser.add_argument("--edges", type=int, default=2000, help="graph edges per rank")
    parser.add_argument("--reps", type=int, help="timed repetitions per mode")
    parser.add_argument(
        "--modes", nargs="+", choices=MODES, default=list(MODES), help="modes (default all)"
    )
    args = parser.parse_args(argv)
    if args.nproc < 2:
        parser.error("--nproc must be at least 2")
    reps = args.reps or (15 if args.quick else 50)
    warmup = 2 if args.quick else 5
    # One thread per rank: the machine's cores are shared by the ranks.
    os.environ["OMP_NUM_THREADS"] = "1"
    mp.spawn(
        _worker,
        args=(
            args.nproc,
            _free_port(),
            args.hidden,
            reps,
            warmup,
            args.nodes,
            args.edges,
            list(dict.fromkeys(args.modes)),
        ),
        nprocs=args.nproc,
        join=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
