"""One simulated TrackML event: particles -> propagation -> digitisation -> noise -> weights.

Every event draws from its own random stream, derived from (seed, event_id) by numpy's
SeedSequence, so an event's bytes do not depend on which other events are simulated with it or in
which order (Snakemake simulates one event per job).
"""

from __future__ import annotations

import functools
import math
import sys
import time
import tracemalloc
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd

from trackgnn.atomic import ensure_directory
from trackgnn.errors import TrackGNNError
from trackgnn.geometry import Detector
from trackgnn.io import Event, event_prefix, write_event
from trackgnn.simulation.digitisation import digitise
from trackgnn.simulation.field import FIELD_MODELS, make_field
from trackgnn.simulation.interactions import hadronic_secondaries
from trackgnn.simulation.particles import GENERATORS, generate_primaries
from trackgnn.simulation.propagation import Material, Propagator
from trackgnn.simulation.weights import encode_particle_id, phase2_weights

# Particles below this pT are not propagated: in the TrackML files particles below 150 MeV
# mostly leave no hit (they are in the particles file with nhits = 0).
SIM_MIN_PT = 0.15
# Fraction of sensor crossings that leave no hit (measured 2-3 %).
INEFFICIENCY = 0.025
# Secondaries of secondaries are followed up to this generation.
MAX_GENERATION = 3
PROCESS_PRIMARY = 0
# Process code of hadronic-interaction secondaries (Geant4's subtype for hadron inelastic).
PROCESS_HADRONIC = 121
_MAX_FIELD_12 = 0xFFF
_MAX_EVENT_ID = 999_999_999


def event_rng(seed: int, event_id: int) -> np.random.Generator:
    """The random stream of one event: a function of (seed, event_id) only."""
    return np.random.default_rng(np.random.SeedSequence(entropy=seed, spawn_key=(event_id,)))


@functools.lru_cache(maxsize=8)
def _propagator(detector: Detector, field: str) -> Propagator:
    return Propagator(detector, make_field(field), Material.for_detector(detector))


def _validate(event_id: int, mu: float, seed: int, generator: str, field: str, noise: float):
    if not isinstance(seed, int | np.integer) or seed < 0:
        raise TrackGNNError(f"seed: must be a non-negative integer, got {seed!r}")
    if not isinstance(event_id, int | np.integer) or not 0 <= event_id <= _MAX_EVENT_ID:
        raise TrackGNNError(
            f"event id: must be an integer in [0, {_MAX_EVENT_ID}], got {event_id!r}"
        )
    if not (isinstance(mu, int | float | np.number) and math.isfinite(mu) and mu >= 0):
        raise TrackGNNError(f"mu: must be a finite number >= 0, got {mu!r}")
    if not (isinstance(noise, int | float | np.number) and 0.0 <= noise < 1.0):
        raise TrackGNNError(f"noise fraction: must be in [0, 1), got {noise!r}")
    if generator not in GENERATORS:
        raise TrackGNNError(
            f"generator: unknown generator {generator!r} (choose one of {', '.join(GENERATORS)})"
        )
    if field not in FIELD_MODELS:
        raise TrackGNNError(
            f"field: unknown model {field!r} (choose one of {', '.join(FIELD_MODELS)})"
        )


class _Stages:
    """Wall time per stage, and the peak traced memory per stage when tracemalloc is on."""

    def __init__(self, memory: dict[str, int] | None) -> None:
        self.timings: dict[str, float] = {}
        self.memory = memory
        self.tracing = memory is not None and tracemalloc.is_tracing()

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        if self.tracing:
            tracemalloc.reset_peak()
        start = time.perf_counter()
        yield
        self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - start
        if self.tracing and self.memory is not None:
            peak = tracemalloc.get_traced_memory()[1]
            self.memory[name] = max(self.memory.get(name, 0), peak)


class _ParticleTable:
    """Growing arrays of all particles of an event (primaries, then secondaries by generation)."""

    def __init__(self) -> None:
        names = (
            "vertex_id primary_id generation secondary_id process pdg charge mass vertex momentum"
        )
        self.columns: dict[str, list[np.ndarray]] = {k: [] for k in names.split()}
        self.size = 0

    def add(self, **cols: np.ndarray) -> np.ndarray:
        n = len(cols["pdg"])
        for key, value in cols.items():
            self.columns[key].append(value)
        rows = np.arange(self.size, self.size + n)
        self.size += n
        return rows

    def array(self, key: str) -> np.ndarray:
        return np.concatenate(self.columns[key])


def _rank_in_groups(key: np.ndarray) -> np.ndarray:
    """1-based rank of each element among equal keys, in order of appearance."""
    order = np.argsort(key, kind="stable")
    sorted_key = key[order]
    start = np.ones(len(key), dtype=bool)
    start[1:] = sorted_key[1:] != sorted_key[:-1]
    first = np.maximum.accumulate(np.where(start, np.arange(len(key)), 0))
    rank = np.empty(len(key), dtype=np.int64)
    rank[order] = np.arange(len(key)) - first + 1
    return rank


def _trapezoid_points(
    detector: Detector, module: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """(N, 2) points uniform in area on the (trapezoidal) modules ``module``."""
    hv = detector.hv[module]
    a = detector.min_hu[module]
    b = detector.max_hu[module] - a
    # Density in t = (v + hv) / (2 hv) is proportional to a + b t; invert its CDF (stable form).
    x = rng.random(len(module)) * (a + 0.5 * b)
    t = 2.0 * x / (a + np.sqrt(a * a + 2.0 * b * x))
    v = (2.0 * t - 1.0) * hv
    u = (2.0 * rng.random(len(module)) - 1.0) * detector.half_width_u(module, v)
    return np.stack([u, v], axis=1)


def simulate_event(
    detector: Detector,
    event_id: int,
    mu: float,
    seed: int,
    generator: str = "parametric",
    field: str = "solenoid",
    noise_fraction: float = 0.15,
    stage_memory: dict[str, int] | None = None,
) -> tuple[Event, dict[str, float]]:
    """Simulate one TrackML event.

    Args:
        detector: the geometry (``Detector.load()`` for TrackML).
        event_id: event number; with ``seed`` it fixes the random stream.
        mu: mean number of pile-up collisions.
        seed: run seed (non-negative).
        generator: 'parametric' (minimum-bias parametrisation) or 'pythia8' (ttbar + pile-up).
        field: 'solenoid' (TrackML field map fit) or 'uniform' (2 T).
        noise_fraction: fraction of all hits that are noise, in [0, 1).
        stage_memory: if given and tracemalloc is tracing, filled with peak bytes per stage.

    Returns:
        The event (hits, cells, particles, truth in TrackML dtypes) and the wall time per stage (s).
    """
    _validate(event_id, mu, seed, generator, field, noise_fraction)
    stages = _Stages(stage_memory)
    start = time.perf_counter()
    rng = event_rng(int(seed), int(event_id))
    table = _ParticleTable()

    with stages("particles"):
        prim = generate_primaries(rng, float(mu), generator, int(seed))
        n_prim = len(prim.pdg)
        if n_prim and int(_rank_in_groups(prim.vertex_id).max()) > 0xFFFF:
            raise TrackGNNError("generator: more than 65535 particles in one collision")
        rows = table.add(
            vertex_id=prim.vertex_id,
            primary_id=_rank_in_groups(prim.vertex_id),
            generation=np.zeros(n_prim, dtype=np.int64),
            secondary_id=np.zeros(n_prim, dtype=np.int64),
            process=np.full(n_prim, PROCESS_PRIMARY, dtype=np.int64),
            pdg=prim.pdg,
            charge=prim.charge,
            mass=prim.mass,
            vertex=prim.vertex,
            momentum=prim.momentum,
        )

    propagator = _propagator(detector, field)
    crossings: dict[str, list[np.ndarray]] = {
        k: [] for k in ("particle", "module", "pos", "dir", "p")
    }
    vertex_id, primary_id = prim.vertex_id, table.array("primary_id")
    momentum, vertex = prim.momentum, prim.vertex
    charge, mass = prim.charge, prim.mass
    for generation in range(MAX_GENERATION + 1):
        with stages("propagation"):
            pt = np.hypot(momentum[:, 0], momentum[:, 1])
            go = np.flatnonzero(pt >= SIM_MIN_PT)
            p = np.linalg.norm(momentum[go], axis=1)
            result = propagator.propagate(
                vertex[go], momentum[go] / p[:, None], p, charge[go], mass[go], rng
            )
            crossings["particle"].append(rows[go][result.particle])
            crossings["module"].append(result.module)
            crossings["pos"].append(result.position)
            crossings["dir"].append(result.direction)
            crossings["p"].append(result.momentum)
        if generation == MAX_GENERATION or len(result.interaction_particle) == 0:
            break
        with stages("secondaries"):
            sec = hadronic_secondaries(
                rng,
                result.interaction_position,
                result.interaction_direction,
                result.interaction_momentum,
            )
            parent_local = go[result.interaction_particle][sec.parent]
            vertex_id = vertex_id[parent_local]
            primary_id = primary_id[parent_local]
            secondary_id = _rank_in_groups(vertex_id * 2**16 + primary_id)
            keep = secondary_id <= _MAX_FIELD_12
            n_sec = int(keep.sum())
            vertex_id, primary_id, secondary_id = (
                vertex_id[keep],
                primary_id[keep],
                secondary_id[keep],
            )
            momentum, vertex = sec.momentum[keep], sec.vertex[keep]
            charge, mass = sec.charge[keep], sec.mass[keep]
            rows = table.add(
                vertex_id=vertex_id,
                primary_id=primary_id,
                generation=np.full(n_sec, generation + 1, dtype=np.int64),
                secondary_id=secondary_id,
                process=np.full(n_sec, PROCESS_HADRONIC, dtype=np.int64),
                pdg=sec.pdg[keep],
                charge=charge,
                mass=mass,
                vertex=vertex,
                momentum=momentum,
            )
        if n_sec == 0:
            break

    with stages("digitisation"):
        cross_particle = np.concatenate(crossings["particle"])
        cross_module = np.concatenate(crossings["module"])
        cross_pos = np.concatenate(crossings["pos"])
        cross_dir = np.concatenate(crossings["dir"])
        cross_p = np.concatenate(crossings["p"])
        efficient = rng.random(len(cross_particle)) >= INEFFICIENCY
        cross_particle, cross_module = cross_particle[efficient], cross_module[efficient]
        cross_pos, cross_dir, cross_p = (
            cross_pos[efficient],
            cross_dir[efficient],
            cross_p[efficient],
        )
        rot = detector.rotation[cross_module]
        local_pos = np.einsum("nij,ni->nj", rot, cross_pos - detector.center[cross_module])
        local_dir = np.einsum("nij,ni->nj", rot, cross_dir)
        signal = digitise(detector, cross_module, local_pos[:, :2], local_dir, rng)

    with stages("noise"):
        n_signal = len(cross_particle)
        n_noise = round(noise_fraction / (1.0 - noise_fraction) * n_signal)
        if noise_fraction > 0:
            n_noise = max(n_noise, 1)  # never an empty event (an event file needs a hit)
        noise_module = rng.integers(0, detector.n_modules, n_noise)
        noise_local = _trapezoid_points(detector, noise_module, rng)
        # Noise clusters take the local incidence of a random signal crossing of the same volume,
        # so their cluster shapes match the real ones (cells per hit are measured on all hits).
        noise_dir = np.zeros((n_noise, 3))
        noise_dir[:, 2] = 1.0
        signal_volume = detector.volume_id[cross_module]
        by_volume = np.argsort(signal_volume, kind="stable")
        volumes, first, count = np.unique(
            signal_volume[by_volume], return_index=True, return_counts=True
        )
        noise_volume = detector.volume_id[noise_module]
        if len(volumes):
            slot = np.minimum(np.searchsorted(volumes, noise_volume), len(volumes) - 1)
            has = volumes[slot] == noise_volume
        else:
            slot, has = np.zeros(n_noise, dtype=np.int64), np.zeros(n_noise, dtype=bool)
        pick = first[slot[has]] + (rng.random(int(has.sum())) * count[slot[has]]).astype(np.int64)
        noise_dir[has] = local_dir[by_volume[pick]]
        noise = digitise(detector, noise_module, noise_local, noise_dir, rng)

    with stages("assemble"):
        event, n_hits_by_row, hit_pid, hit_tz, pid, vz, ppt = _assemble(
            detector,
            event_id,
            table,
            cross_particle,
            cross_module,
            cross_pos,
            cross_dir * cross_p[:, None],
            signal,
            noise_module,
            noise,
        )

    with stages("weights"):
        weights = phase2_weights(hit_pid, hit_tz, pid, vz, ppt, n_hits_by_row)
        event.truth["weight"] = weights.astype(np.float32)

    stages.timings["total"] = time.perf_counter() - start
    return event, stages.timings


def _assemble(
    detector: Detector,
    event_id: int,
    table: _ParticleTable,
    cross_particle: np.ndarray,
    cross_module: np.ndarray,
    cross_pos: np.ndarray,
    cross_mom: np.ndarray,
    signal,
    noise_module: np.ndarray,
    noise,
):
    """TrackML tables from the digitised crossings and noise; hits ordered by module."""
    d = detector
    n_signal, n_noise = len(cross_module), len(noise_module)
    module = np.concatenate([cross_module, noise_module])
    local = np.concatenate([signal.local, noise.local])
    position = np.concatenate([signal.position, noise.position])
    particle_row = np.concatenate([cross_particle, np.full(n_noise, -1, dtype=np.int64)])
    # Module order is (volume, layer, module); within a module order by position, so hit ids say
    # nothing about which hits are signal.
    order = np.lexsort((local[:, 0], local[:, 1], module))
    new_index = np.empty(len(order), dtype=np.int64)
    new_index[order] = np.arange(len(order))
    module, position, particle_row = module[order], position[order], particle_row[order]
    hit_id = np.arange(1, len(order) + 1, dtype=np.int32)

    cell_hit = np.concatenate([signal.cell_hit, noise.cell_hit + n_signal])
    cell_hit_id = new_index[cell_hit] + 1
    cell_order = np.argsort(cell_hit_id, kind="stable")
    cells = pd.DataFrame(
        {
            "hit_id": cell_hit_id[cell_order].astype(np.int32),
            "ch0": np.concatenate([signal.ch0, noise.ch0])[cell_order],
            "ch1": np.concatenate([signal.ch1, noise.ch1])[cell_order],
            "value": np.concatenate([signal.value, noise.value])[cell_order].astype(np.float32),
        }
    )
    hits = pd.DataFrame(
        {
            "hit_id": hit_id,
            "x": position[:, 0].astype(np.float32),
            "y": position[:, 1].astype(np.float32),
            "z": position[:, 2].astype(np.float32),
            "volume_id": d.volume_id[module],
            "layer_id": d.layer_id[module],
            "module_id": d.module_id[module],
        }
    )

    pid = encode_particle_id(
        table.array("vertex_id"),
        table.array("primary_id"),
        table.array("generation"),
        table.array("secondary_id"),
        table.array("process"),
    )
    vertex = table.array("vertex")
    momentum = table.array("momentum")
    signal_hit = particle_row >= 0
    nhits = np.bincount(particle_row[signal_hit], minlength=table.size)
    particles = pd.DataFrame(
        {
            "particle_id": pid,
            "particle_type": table.array("pdg").astype(np.int32),
            "vx": vertex[:, 0].astype(np.float32),
            "vy": vertex[:, 1].astype(np.float32),
            "vz": vertex[:, 2].astype(np.float32),
            "px": momentum[:, 0].astype(np.float32),
            "py": momentum[:, 1].astype(np.float32),
            "pz": momentum[:, 2].astype(np.float32),
            "q": table.array("charge").astype(np.int32),
            "nhits": nhits.astype(np.int32),
        }
    )

    # Truth: the mid-plane crossing for signal; the hit itself (no momentum) for noise.
    truth_pos = np.concatenate([cross_pos, noise.position])[order]
    truth_mom = np.concatenate([cross_mom, np.zeros((n_noise, 3))])[order]
    hit_pid = np.where(signal_hit, pid[np.maximum(particle_row, 0)], 0)
    truth = pd.DataFrame(
        {
            "hit_id": hit_id,
            "particle_id": hit_pid.astype(np.int64),
            "tx": truth_pos[:, 0].astype(np.float32),
            "ty": truth_pos[:, 1].astype(np.float32),
            "tz": truth_pos[:, 2].astype(np.float32),
            "tpx": truth_mom[:, 0].astype(np.float32),
            "tpy": truth_mom[:, 1].astype(np.float32),
            "tpz": truth_mom[:, 2].astype(np.float32),
            "weight": np.zeros(len(hit_id), dtype=np.float32),
        }
    )
    event = Event(event_id=int(event_id), hits=hits, cells=cells, particles=particles, truth=truth)
    # Weights use the values as written (float32), so they reproduce from the files.
    return (
        event,
        nhits,
        hit_pid,
        truth["tz"].to_numpy(np.float64),
        pid,
        particles["vz"].to_numpy(np.float64),
        np.hypot(particles["px"].to_numpy(np.float64), particles["py"].to_numpy(np.float64)),
    )


def simulate_events(
    n_events: int,
    mu: float,
    seed: int,
    output_dir: str | Path,
    first_event_id: int = 1000,
    generator: str = "parametric",
    field: str = "solenoid",
    noise_fraction: float = 0.15,
    detector: Detector | None = None,
    compress: bool = False,
) -> list[dict[str, float]]:
    """Simulate events ``first_event_id ... + n_events - 1`` into ``output_dir``.

    Writes ``event{id:09d}-{hits,cells,particles,truth}.csv`` per event (atomically) and prints a
    progress line per event to stderr. Returns the per-event stage timings.
    """
    if not isinstance(n_events, int | np.integer) or n_events < 1:
        raise TrackGNNError(f"events: must be a positive integer, got {n_events!r}")
    if first_event_id + n_events - 1 > _MAX_EVENT_ID:
        raise TrackGNNError(f"first event id: ids must stay below {_MAX_EVENT_ID + 1} (9 digits)")
    _validate(first_event_id, mu, seed, generator, field, noise_fraction)
    output_dir = ensure_directory(output_dir)  # fails before any simulation work
    detector = Detector.load() if detector is None else detector
    all_timings = []
    for i in range(n_events):
        event_id = first_event_id + i
        event, timings = simulate_event(
            detector, event_id, mu, seed, generator, field, noise_fraction
        )
        start = time.perf_counter()
        write_event(event, event_prefix(output_dir, event_id), compress=compress)
        timings["write"] = time.perf_counter() - start
        all_timings.append(timings)
        n_noise = int((event.truth["particle_id"] == 0).sum())
        print(
            f"simulate: event {event_id} ({i + 1}/{n_events}): {len(event.hits)} hits "
            f"({n_noise} noise), {len(event.particles)} particles, "
            f"{timings['total']:.2f} s simulation + {timings['write']:.2f} s writing",
            file=sys.stderr,
            flush=True,
        )
    return all_timings
