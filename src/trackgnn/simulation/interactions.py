"""Secondaries of hadronic interactions in the detector material.

A particle that interacts in a sensor ends there. It leaves a Poisson number of charged
secondaries (pions and protons, the latter mostly nuclear fragments) that share a Dirichlet-random
part of its momentum and leave at angles set by a transverse kick of a few hundred MeV. The mean
multiplicity is tuned so that about a fifth of an event's particles are secondaries, as in the
TrackML files (21 %, median production radius 175 mm).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from trackgnn.simulation.particles import MIN_PT, PION_MASS, PROTON_MASS

# Mean number of charged secondaries per interaction (before the pT > MIN_PT acceptance).
MEAN_CHARGED_SECONDARIES = 5.0
# Secondary species: pi+- / p (nuclear fragments: protons, never antiprotons).
PROTON_FRACTION = 0.45
# Rayleigh width (GeV) of the transverse momentum of a secondary relative to its parent.
TRANSVERSE_KICK = 0.25


@dataclass
class Secondaries:
    """Charged secondaries with pT > MIN_PT."""

    parent: np.ndarray  # (N,) index into the interaction arrays
    pdg: np.ndarray  # (N,) int32
    charge: np.ndarray  # (N,) int32
    mass: np.ndarray  # (N,)
    vertex: np.ndarray  # (N, 3)
    momentum: np.ndarray  # (N, 3)


def _orthonormal(direction: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ref = np.zeros_like(direction)
    ref[:, 2] = 1.0
    ref[np.abs(direction[:, 2]) > 0.9] = [1.0, 0.0, 0.0]
    e1 = np.cross(direction, ref)
    e1 /= np.linalg.norm(e1, axis=1, keepdims=True)
    return e1, np.cross(direction, e1)


def hadronic_secondaries(
    rng: np.random.Generator,
    position: np.ndarray,
    direction: np.ndarray,
    momentum: np.ndarray,
) -> Secondaries:
    """Charged secondaries of interactions at ``position`` of parents (unit ``direction``, p)."""
    n_int = len(momentum)
    count = rng.poisson(MEAN_CHARGED_SECONDARIES, size=n_int)
    parent = np.repeat(np.arange(n_int), count)
    n = len(parent)
    # Dirichlet momentum shares: n_i charged secondaries plus one share for neutrals/the nucleus.
    energy = rng.exponential(size=n)
    rest = rng.exponential(size=n_int)
    total = np.bincount(parent, weights=energy, minlength=n_int) + rest
    p = momentum[parent] * energy / total[parent]
    kick = TRANSVERSE_KICK * np.sqrt(-2.0 * np.log1p(-rng.random(n)))  # Rayleigh
    sin_theta = np.minimum(kick / np.maximum(p, 1e-12), 1.0)
    cos_theta = np.sqrt(1.0 - sin_theta**2)
    azimuth = rng.uniform(0.0, 2.0 * np.pi, n)
    proton = rng.random(n) < PROTON_FRACTION
    charge = np.where(proton | (rng.random(n) < 0.5), 1, -1).astype(np.int32)
    e1, e2 = _orthonormal(direction)
    unit = (
        direction[parent] * cos_theta[:, None]
        + e1[parent] * (sin_theta * np.cos(azimuth))[:, None]
        + e2[parent] * (sin_theta * np.sin(azimuth))[:, None]
    )
    mom = unit * p[:, None]
    keep = np.hypot(mom[:, 0], mom[:, 1]) > MIN_PT
    pdg = np.where(proton, 2212, 211) * charge
    return Secondaries(
        parent=parent[keep],
        pdg=pdg[keep].astype(np.int32),
        charge=charge[keep],
        mass=np.where(proton, PROTON_MASS, PION_MASS)[keep],
        vertex=position[parent][keep],
        momentum=mom[keep],
    )
