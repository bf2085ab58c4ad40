"""Gradient synchronisation per step: one all-reduce per parameter tensor versus one coalesced call.

Two gloo processes (``--nproc``) hold the gradients of an Interaction GNN with the shapes of the
paper's model (node and edge encoders, 8 message-passing iterations each with its own edge MLP and
node MLP, an edge classifier head; 3-layer MLPs with LayerNorm; concatenation of the encoded inputs)
and synchronise them with ``allreduce_gradients_per_parameter`` and with
``allreduce_gradients_coalesced`` from ``trackgnn.training.distributed``, interleaved repetition by
repetition (the order alternates) after untimed warm-up rounds. Ranks meet at a barrier before each
timed call, so the time is the synchronisation's, not a wait for the other rank; each timed call
gets freshly allocated gradient tensors, as after ``backward`` in training.

Output (rank 0, stdout): one JSON line per measurement with ``mode`` (``per_parameter`` or
``coalesced``), ``sync_ms``, ``n_tensors``, ``n_bytes``; then per hidden size one ``ratio`` line
with the medians and ``ratio = median(per_parameter) / median(coalesced)``.

    python bench/allreduce.py --quick     # < 1 minute
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
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from trackgnn.training.distributed import (
    allreduce_gradients_coalesced,
    allreduce_gradients_per_parameter,
)

NODE_FEATURES = 12  # r, phi, z, eta + cell-cluster shape features
EDGE_FEATURES = 6
N_ITERATIONS = 8
TARGET_RATIO = 20.0


def _mlp(n_in: int, hidden: int, n_out: int) -> nn.Sequential:
    """Three Linear layers, each followed by LayerNorm (acorn's make_mlp with layer_norm)."""
    return nn.Sequential(
        nn.Linear(n_in, hidden),
        nn.LayerNorm(hidden),
        nn.ReLU(),
        nn.Linear(hidden, hidden),
        nn.LayerNorm(hidden),
        nn.ReLU(),
        nn.Linear(hidden, n_out),
        nn.LayerNorm(n_out) if n_out > 1 else nn.Identity(),
    )


def interaction_gnn_parameters(hidden: int) -> list[nn.Parameter]:
    """Parameters with the shapes of the paper's Interaction GNN (Algorithm 1), concat variant."""
    state = 2 * hidden  # the current features concatenated with the encoded inputs
    modules = [
        _mlp(NODE_FEATURES, hidden, hidden),  # node encoder
        _mlp(EDGE_FEATURES, hidden, hidden),  # edge encoder
    ]
    for _ in range(N_ITERATIONS):
        modules.append(_mlp(3 * state, hidden, hidden))  # edge MLP: [edge, source, destination]
        modules.append(
            _mlp(2 * hidden + state, hidden, hidden)
        )  # node MLP: [sum in, sum out, self]
    modules.append(_mlp(3 * state, hidden, 1))  # edge classifier head
    return [p for module in modules for p in module.parameters()]


def _gradient_template(params: list[nn.Parameter], rank: int) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(rank)
    return [torch.randn(p.shape, generator=generator) for p in params]


def _timed(sync, params: list[nn.Parameter], template: list[torch.Tensor]) -> float:
    # Fresh gradient tensors each step, as backward after zero_grad(set_to_none=True) makes them
    # (the coalesced call leaves the grads as views of its buffer, which must not carry over).
    for p, g in zip(params, template, strict=True):
        p.grad = g.clone()
    dist.barrier()
    start = time.perf_counter()
    sync(params)
    return (time.perf_counter() - start) * 1e3


def _worker(
    rank: int, world_size: int, port: int, hiddens: list[int], reps: int, warmup: int
) -> None:
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", rank=rank, world_size=world_size, timeout=timedelta(seconds=120)
    )
    modes = {
        "per_parameter": allreduce_gradients_per_parameter,
        "coalesced": allreduce_gradients_coalesced,
    }
    for hidden in hiddens:
        torch.manual_seed(0)
        params = interaction_gnn_parameters(hidden)
        template = _gradient_template(params, rank)
        n_tensors = len(params)
        n_bytes = sum(p.numel() * p.element_size() for p in params)
        for _ in range(warmup):
            for sync in modes.values():
                _timed(sync, params, template)
        times: dict[str, list[float]] = {mode: [] for mode in modes}
        for rep in range(reps):
            order = list(modes) if rep % 2 == 0 else list(reversed(modes))
            for mode in order:
                elapsed = _timed(modes[mode], params, template)
                times[mode].append(elapsed)
                if rank == 0:
                    line = {
                        "bench": "allreduce",
                        "mode": mode,
                        "rep": rep,
                        "sync_ms": round(elapsed, 4),
                        "n_tensors": n_tensors,
                        "n_bytes": n_bytes,
                        "hidden": hidden,
                        "world_size": world_size,
                        "backend": "gloo",
                    }
                    print(json.dumps(line), flush=True)
        if rank == 0:
            per_parameter = statistics.median(times["per_parameter"])
            coalesced = statistics.median(times["coalesced"])
            ratio = per_parameter / coalesced
            line = {
                "bench": "allreduce",
                "ratio": round(ratio, 2),
                "ratio_of": "median per_parameter / median coalesced sync_ms",
                "median_per_parameter_ms": round(per_parameter, 4),
                "median_coalesced_ms": round(coalesced, 4),
                "reps": reps,
                "n_tensors": n_tensors,
                "n_bytes": n_bytes,
                "hidden": hidden,
                "world_size": world_size,
                "torch_threads": torch.get_num_threads(),
                "torch": torch.__version__,
                "target": TARGET_RATIO,
                "meets_target": ratio >= TARGET_RATIO,
            }
            print(json.dumps(line), flush=True)
    dist.barrier()
    dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few repetitions, < 1 minute")
    parser.add_argument("--nproc", type=int, default=2, help="gloo processes (default 2)")
    parser.add_argument(
        "--hidden", type=int, nargs="+", default=[64, 128], help="hidden sizes (default 64 128)"
    )
    parser.add_argument("--reps", type=int, help="timed repetitions per mode")
    args = parser.parse_args(argv)
    if args.nproc < 2:
        parser.error("--nproc must be at least 2")
    reps = args.reps or (15 if args.quick else 200)
    warmup = 2 if args.quick else 10
    # One thread per rank: the machine's cores are shared by the ranks.
    os.environ["OMP_NUM_THREADS"] = "1"
    mp.spawn(
        _worker,
        args=(args.nproc, _free_port(), args.hidden, reps, warmup),
        nprocs=args.nproc,
        join=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
