"""Primary particles of an event: parametric minimum-bias pile-up or Pythia 8.

The parametric generator follows the shape of Pythia 8 minimum bias at 14 TeV within the
acceptance (charged, pT > 0.1 GeV, |eta| < 4): negative-binomial multiplicity per collision
(k 1.2), flat eta, a Tsallis pT spectrum, pi / K / p = 0.84 / 0.11 / 0.05 with charge +1 / -1
equally. Its mean multiplicity is set by the real TrackML files, not by Pythia (see
MINBIAS_MEAN). Collisions sit at beam-spot vertices (sigma_xy 17 um, sigma_z 55.6 mm).
"""

from __future__ import annotations

import functools
import os
import sysconfig
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from trackgnn.errors import TrackGNNError

GENERATORS = ("parametric", "pythia8")

PION_MASS = 0.13957039
KAON_MASS = 0.493677
PROTON_MASS = 0.93827209

# Acceptance of generated particles.
MIN_PT = 0.1
MAX_ABS_ETA = 4.0

# Minimum-bias parametrisation, fitted to the real TrackML events' particle figures. Pythia 8
# SoftQCD:inelastic gives 49.4 charged particles per collision in the acceptance, but the real
# mu = 200 files hold about 10,000 particles in it, a fifth of them secondaries: about 39 primaries
# per collision. 49.4 made events of 12,560 particles and 140,200 hits (real: 111,600); the mean
# is set to the files, which are what the models are trained for and evaluated on.
MINBIAS_MEAN = 39.4
MINBIAS_K = 1.2
TSALLIS_T = 0.169
TSALLIS_N = 6.85
TSALLIS_M = 0.14
SPECIES_PDG = np.array([211, 321, 2212], dtype=np.int32)
SPECIES_MASS = np.array([PION_MASS, KAON_MASS, PROTON_MASS])
SPECIES_FRACTION = np.array([0.84, 0.11, 0.05])

# Beam spot (mm).
BEAM_SIGMA_XY = 0.017
BEAM_SIGMA_Z = 55.6

# particle_id holds the vertex id in bits 52-63; staying below 2048 keeps ids positive in int64.
MAX_VERTICES = 2047


@dataclass
class Primaries:
    """Generated charged primaries within the acceptance."""

    vertex_id: np.ndarray  # (N,) int64, 1-based collision index (1 = the triggered collision)
    pdg: np.ndarray  # (N,) int32 signed PDG id
    charge: np.ndarray  # (N,) int32
    mass: np.ndarray  # (N,) GeV
    vertex: np.ndarray  # (N, 3) production point (mm)
    momentum: np.ndarray  # (N, 3) GeV
    n_collisions: int


@functools.lru_cache(maxsize=1)
def _tsallis_table() -> tuple[np.ndarray, np.ndarray]:
    """pT grid and CDF of dN/dpT ~ pT (1 + (mT - m) / (n T))^-n on [MIN_PT, 200] GeV."""
    grid = np.geomspace(MIN_PT, 200.0, 20001)
    m_t = np.sqrt(grid * grid + TSALLIS_M**2)
    pdf = grid * (1.0 + (m_t - TSALLIS_M) / (TSALLIS_N * TSALLIS_T)) ** (-TSALLIS_N)
    cdf = np.concatenate([[0.0], np.cumsum(0.5 * (pdf[1:] + pdf[:-1]) * np.diff(grid))])
    return grid, cdf / cdf[-1]


def sample_tsallis_pt(rng: np.random.Generator, n: int) -> np.ndarray:
    """``n`` transverse momenta (GeV) from the minimum-bias Tsallis spectrum above MIN_PT."""
    grid, cdf = _tsallis_table()
    return np.interp(rng.random(n), cdf, grid)


def _beam_spot(rng: np.random.Generator, n: int) -> np.ndarray:
    sigma = np.array([BEAM_SIGMA_XY, BEAM_SIGMA_XY, BEAM_SIGMA_Z])
    return rng.standard_normal((n, 3)) * sigma


def _check_vertices(n_collisions: int, mu: float) -> None:
    if n_collisions > MAX_VERTICES:
        raise TrackGNNError(
            f"mu={mu}: {n_collisions} collisions exceed the {MAX_VERTICES} vertices that "
            "particle_id can hold"
        )


def parametric_minbias(rng: np.random.Generator, mu: float) -> Primaries:
    """Minimum-bias pile-up: Poisson(mu) collisions, at least one (the triggered one, which has
    at least one charged particle in the acceptance)."""
    n_collisions = max(1, int(rng.poisson(mu)))
    _check_vertices(n_collisions, mu)
    p_success = MINBIAS_K / (MINBIAS_K + MINBIAS_MEAN)
    multiplicity = rng.negative_binomial(MINBIAS_K, p_success, size=n_collisions)
    multiplicity[0] = max(int(multiplicity[0]), 1)
    vertices = _beam_spot(rng, n_collisions)
    n = int(multiplicity.sum())
    vertex_id = np.repeat(np.arange(1, n_collisions + 1, dtype=np.int64), multiplicity)
    eta = rng.uniform(-MAX_ABS_ETA, MAX_ABS_ETA, n)
    phi = rng.uniform(-np.pi, np.pi, n)
    pt = sample_tsallis_pt(rng, n)
    species = rng.choice(len(SPECIES_PDG), size=n, p=SPECIES_FRACTION)
    charge = np.where(rng.random(n) < 0.5, 1, -1).astype(np.int32)
    momentum = np.stack([pt * np.cos(phi), pt * np.sin(phi), pt * np.sinh(eta)], axis=1)
    return Primaries(
        vertex_id=vertex_id,
        pdg=(SPECIES_PDG[species] * charge).astype(np.int32),
        charge=charge,
        mass=SPECIES_MASS[species],
        vertex=vertices[vertex_id - 1],
        momentum=momentum,
        n_collisions=n_collisions,
    )


# ----------------------------------------------------------------------------- Pythia 8
_PYTHIA_COMMON = (
    "Beams:eCM = 14000.",
    "Print:quiet = on",
    "Random:setSeed = on",
    # Particles with c tau > 10 mm are stable (decayed by the detector simulation, not here).
    "ParticleDecays:limitTau0 = on",
    "ParticleDecays:tau0Max = 10",
)
_PYTHIA_HARD = ("Top:gg2ttbar = on", "Top:qqbar2ttbar = on")
_PYTHIA_SOFT = ("SoftQCD:inelastic = on",)


def _import_pythia():
    try:
        import pythia8mc
    except ImportError:
        raise TrackGNNError(
            "generator pythia8: the Python package pythia8mc is not installed "
            "(pip install 'trackgnn[pythia8]', i.e. pythia8mc==8.317.2)"
        ) from None
    if "PYTHIA8DATA" not in os.environ:
        # The wheel installs a single extension module and puts the settings under the
        # environment's data prefix (<prefix>/share/Pythia8/xmldoc), not beside the module.
        candidates = [
            Path(sysconfig.get_path("data")) / "share" / "Pythia8" / "xmldoc",
            Path(pythia8mc.__file__).parent / "share" / "Pythia8" / "xmldoc",
        ]
        found = next((c for c in candidates if (c / "Index.xml").is_file()), candidates[0])
        os.environ["PYTHIA8DATA"] = str(found)
    return pythia8mc


def _make_pythia(module, settings: tuple[str, ...], seed: int):
    pythia = module.Pythia("", False)
    for line in (*_PYTHIA_COMMON, *settings, f"Random:seed = {seed}"):
        if not pythia.readString(line):
            raise TrackGNNError(f"generator pythia8: setting {line!r} rejected")
    if not pythia.init():
        raise TrackGNNError("generator pythia8: initialisation failed (see PYTHIA8DATA)")
    return pythia


def _charged_final(pythia) -> np.ndarray:
    """(n, 8) id, charge, px, py, pz, m, x, y, z of accepted charged final-state particles."""
    for _ in range(100):
        if pythia.next():
            break
    else:
        raise TrackGNNError("generator pythia8: 100 failed attempts to generate an event")
    rows = [
        (p.id(), p.charge(), p.px(), p.py(), p.pz(), p.m(), p.xProd(), p.yProd(), p.zProd())
        for p in pythia.event
        if p.isFinal() and p.isCharged()
    ]
    table = np.array(rows, dtype=np.float64).reshape(-1, 9)
    pt = np.hypot(table[:, 2], table[:, 3])
    eta = np.arcsinh(table[:, 4] / np.maximum(pt, 1e-12))
    return table[(pt > MIN_PT) & (np.abs(eta) < MAX_ABS_ETA)]


@functools.lru_cache(maxsize=2)
def _pythia_generators(run_seed: int):
    """The (ttbar, SoftQCD) generators of a run, initialised once per process (0.5-11 s)."""
    module = _import_pythia()
    seeds = np.random.SeedSequence([run_seed, 0x50_59_54_48]).generate_state(2) % 900_000_000 + 1
    hard = _make_pythia(module, _PYTHIA_HARD, int(seeds[0]))
    soft = _make_pythia(module, _PYTHIA_SOFT, int(seeds[1]))
    return hard, soft


def pythia8_ttbar_pileup(rng: np.random.Generator, mu: float, run_seed: int) -> Primaries:
    """A ttbar hard scatter (vertex 1) plus Poisson(mu) SoftQCD inelastic pile-up collisions.

    The generators are initialised from the run seed only and re-seeded from ``rng`` before every
    event, so an event is the same whether simulated alone or after others in one process
    (Pythia keeps no other state between events; the tests check this).
    """
    _import_pythia()
    n_pileup = int(rng.poisson(mu))
    _check_vertices(n_pileup + 1, mu)
    seeds = rng.integers(1, 900_000_000, size=2)
    hard, soft = _pythia_generators(int(run_seed))
    hard.rndm.init(int(seeds[0]))
    soft.rndm.init(int(seeds[1]))
    tables = [_charged_final(hard)]
    tables.extend(_charged_final(soft) for _ in range(n_pileup))
    counts = np.array([len(t) for t in tables])
    table = np.concatenate(tables)
    vertex_id = np.repeat(np.arange(1, len(tables) + 1, dtype=np.int64), counts)
    vertices = _beam_spot(rng, len(tables))
    charge = np.rint(table[:, 1]).astype(np.int32)
    return Primaries(
        vertex_id=vertex_id,
        pdg=table[:, 0].astype(np.int32),
        charge=charge,
        mass=table[:, 5],
        vertex=vertices[vertex_id - 1] + table[:, 6:9],
        momentum=table[:, 2:5].copy(),
        n_collisions=len(tables),
    )


def generate_primaries(
    rng: np.random.Generator, mu: float, generator: str, run_seed: int = 0
) -> Primaries:
    """Primaries of one event from ``generator`` ('parametric' or 'pythia8')."""
    if generator == "parametric":
        return parametric_minbias(rng, mu)
    if generator == "pythia8":
        return pythia8_ttbar_pileup(rng, mu, run_seed)
    raise TrackGNNError(
        f"generator: unknown generator {generator!r} (choose one of {', '.join(GENERATORS)})"
    )
