"""Magnetic field models: the TrackML finite solenoid and a uniform 2 T field.

The solenoid is the on-axis field of a finite current sheet, B_z(z) proportional to
cos(theta_1) + cos(theta_2), normalised to B0 at the centre, with parameters fitted to the measured
TrackML map (B0 = 2.009 T, half length 1916 mm, radius 883 mm): 2.01 T at z = 0, 1.96 T at 600 mm,
1.10 T at 1.9 m, 0.48 T at 2.5 m. Off axis, the radial component follows from div B = 0 to first
order, B_r = -(r / 2) dB_z/dz, which matters in the strip endcaps where B_z falls fastest.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from trackgnn.errors import TrackGNNError

FIELD_MODELS = ("solenoid", "uniform")


@dataclass(frozen=True)
class SolenoidField:
    """Finite-solenoid field (tesla) at points in mm."""

    b0: float = 2.009
    half_length: float = 1916.0
    radius: float = 883.0

    def _shape(self, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Unnormalised on-axis B_z shape and its z derivative."""
        a = self.half_length - z
        b = self.half_length + z
        r2 = self.radius**2
        da = np.sqrt(r2 + a * a)
        db = np.sqrt(r2 + b * b)
        shape = 0.5 * (a / da + b / db)
        dshape = 0.5 * (r2 / db**3 - r2 / da**3)
        return shape, dshape

    def __call__(self, points: np.ndarray) -> np.ndarray:
        """(N, 3) field vectors at (N, 3) points."""
        shape, dshape = self._shape(points[:, 2])
        norm = self.b0 / self._shape(np.zeros(1))[0][0]
        out = np.empty_like(points, dtype=np.float64)
        # B_r = -(r / 2) dBz/dz, so B_x = -(x / 2) dBz/dz (no division by r).
        out[:, 0] = -0.5 * points[:, 0] * dshape * norm
        out[:, 1] = -0.5 * points[:, 1] * dshape * norm
        out[:, 2] = shape * norm
        return out


@dataclass(frozen=True)
class UniformField:
    """Uniform field along z (tesla)."""

    bz: float = 2.0

    def __call__(self, points: np.ndarray) -> np.ndarray:
        """(N, 3) field vectors at (N, 3) points."""
        out = np.zeros_like(points, dtype=np.float64)
        out[:, 2] = self.bz
        return out


def make_field(name: str) -> SolenoidField | UniformField:
    """The field model called ``name`` ('solenoid' or 'uniform')."""
    if name == "solenoid":
        return SolenoidField()
    if name == "uniform":
        return UniformField()
    raise TrackGNNError(f"field: unknown model {name!r} (choose one of {', '.join(FIELD_MODELS)})")
