"""The TrackML detector geometry, built generically from ``detectors.csv``.

Nothing here knows the TrackML layer table: layers are the (volume_id, layer_id) groups of the
file, their kind (barrel cylinder or endcap disk) comes from the orientation of their modules'
normals, and their extent from points spread over the modules. A binned lookup gives, for a point
near a layer, the few modules it can be on, so that propagation can intersect tracks with real
module planes in bulk.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from trackgnn.errors import InputError

# A module whose normal w is within ~25 degrees of the beam axis belongs to a disk (endcap).
_ENDCAP_MIN_ABS_WZ = 0.9
# Pixels are (nearly) square, strips long in v: pitch_v / pitch_u above this means a strip.
_STRIP_MIN_ASPECT = 4.0
# Tracks come from the beam spot: |z_vertex| within ~4.5 sigma (sigma_z = 55.6 mm).
_VERTEX_Z_WINDOW_MM = 250.0
# Largest tangential slope (tan of the transverse incidence) the lookup margins allow for.
_MAX_TANGENTIAL_SLOPE = 2.0
# Fixed lookup margin on top of the slope terms (mm): the helix curvature inside the envelope.
_BASE_MARGIN_MM = 1.0


@dataclass(frozen=True, eq=False)
class Detector:
    """Modules and layers of a TrackML-style detector.

    Modules are sorted by (volume_id, layer_id, module_id); ``module_*`` arrays are indexed by that
    position. Layers are the sorted (volume_id, layer_id) pairs; ``layer_*`` arrays are indexed by
    layer position. Lengths in mm.
    """

    source: str
    volume_id: np.ndarray  # (M,) int32
    layer_id: np.ndarray  # (M,) int32
    module_id: np.ndarray  # (M,) int32
    module_layer: np.ndarray  # (M,) int32, index into the layer arrays
    center: np.ndarray  # (M, 3) float64: origin of the module frame
    rotation: np.ndarray  # (M, 3, 3) float64: columns are the u, v, w axes in global coordinates
    thickness: np.ndarray  # (M,)
    min_hu: np.ndarray  # (M,) half width in u at v = -hv
    max_hu: np.ndarray  # (M,) half width in u at v = +hv
    hv: np.ndarray  # (M,) half length in v
    pitch_u: np.ndarray  # (M,)
    pitch_v: np.ndarray  # (M,)
    is_pixel: np.ndarray  # (M,) bool: analogue (path length) readout; strips are binary
    n_channels_u: np.ndarray  # (M,) int32
    n_channels_v: np.ndarray  # (M,) int32

    layer_volume: np.ndarray  # (L,) int32
    layer_layer: np.ndarray  # (L,) int32
    layer_is_barrel: np.ndarray  # (L,) bool
    layer_radius: np.ndarray  # (L,) mean module-centre radius (barrel) or mean radius (disk)
    layer_z: np.ndarray  # (L,) mean module-centre z
    layer_rmin: np.ndarray  # (L,) envelope of the module mid-planes
    layer_rmax: np.ndarray
    layer_zmin: np.ndarray
    layer_zmax: np.ndarray
    layer_n_modules: np.ndarray  # (L,) int32
    layer_thickness: np.ndarray  # (L,) median sensor thickness

    # Binned lookup: per layer a grid in (phi, b), b = z for barrels and r for disks.
    lookup_offset: np.ndarray  # (L,) int64 first bin of the layer in ``lookup_table``
    lookup_nphi: np.ndarray  # (L,) int64
    lookup_nb: np.ndarray  # (L,) int64
    lookup_bmin: np.ndarray  # (L,)
    lookup_bwidth: np.ndarray  # (L,)
    lookup_table: np.ndarray  # (n_bins, K) int32 module indices, -1 padded

    @property
    def n_modules(self) -> int:
        """Number of modules."""
        return len(self.module_id)

    @property
    def n_layers(self) -> int:
        """Number of (volume, layer) layers."""
        return len(self.layer_volume)

    @property
    def axis_u(self) -> np.ndarray:
        """(M, 3) u axes."""
        return self.rotation[:, :, 0]

    @property
    def axis_v(self) -> np.ndarray:
        """(M, 3) v axes."""
        return self.rotation[:, :, 1]

    @property
    def axis_w(self) -> np.ndarray:
        """(M, 3) module normals."""
        return self.rotation[:, :, 2]

    @property
    def volumes(self) -> np.ndarray:
        """Sorted distinct volume ids."""
        return np.unique(self.volume_id)

    @classmethod
    def load(cls, path: str | Path | None = None) -> Detector:
        """Build (once per process and path) the detector of ``detectors.csv[.gz]``.

        ``path=None`` is the TrackML detector shipped with the package.
        """
        return _load_cached(None if path is None else str(Path(path).resolve()))

    @classmethod
    def from_frame(cls, frame: pd.DataFrame, source: str = "<frame>") -> Detector:
        """Build the detector from a ``detectors.csv`` table (as read by ``read_detectors``)."""
        return _build(frame, source)

    def find_modules(
        self, volume_id: np.ndarray, layer_id: np.ndarray, module_id: np.ndarray
    ) -> np.ndarray:
        """Module indices of (volume, layer, module) triples; -1 where unknown."""
        key = _module_key(self.volume_id, self.layer_id, self.module_id)
        want = _module_key(np.asarray(volume_id), np.asarray(layer_id), np.asarray(module_id))
        pos = np.searchsorted(key, want)
        pos = np.clip(pos, 0, len(key) - 1)
        return np.where(key[pos] == want, pos, -1)

    def half_width_u(self, module: np.ndarray, v: np.ndarray) -> np.ndarray:
        """Half width in u of ``module`` at local ``v`` (trapezoids widen from -hv to +hv)."""
        hv = self.hv[module]
        frac = (v + hv) / (2.0 * hv)
        return self.min_hu[module] + (self.max_hu[module] - self.min_hu[module]) * frac

    def to_local(self, module: np.ndarray, points: np.ndarray) -> np.ndarray:
        """(N, 3) global points to (N, 3) local (u, v, w) in the frames of ``module``."""
        delta = points - self.center[module]
        return np.einsum("nij,ni->nj", self.rotation[module], delta)

    def to_global(self, module: np.ndarray, local: np.ndarray) -> np.ndarray:
        """(N, 3) local (u, v, w) in the frames of ``module`` to (N, 3) global points."""
        return np.einsum("nij,nj->ni", self.rotation[module], local) + self.center[module]

    def inside(self, module: np.ndarray, u: np.ndarray, v: np.ndarray, tol: float = 0.0):
        """Whether local (u, v) lies on the active area of ``module``, within ``tol`` (mm)."""
        return (np.abs(v) <= self.hv[module] + tol) & (
            np.abs(u) <= self.half_width_u(module, v) + tol
        )

    def lookup_bin(self, layer: np.ndarray, phi: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Global lookup bin of points (phi, b) on ``layer`` (b = z for barrels, r for disks)."""
        nphi = self.lookup_nphi[layer]
        nb = self.lookup_nb[layer]
        iphi = np.floor((phi + np.pi) / (2.0 * np.pi) * nphi).astype(np.int64) % nphi
        ib = np.floor((b - self.lookup_bmin[layer]) / self.lookup_bwidth[layer]).astype(np.int64)
        ib = np.clip(ib, 0, nb - 1)
        return self.lookup_offset[layer] + iphi * nb + ib

    def candidate_modules(self, layer: np.ndarray, points: np.ndarray) -> np.ndarray:
        """(N, K) indices of the modules of ``layer`` that a track near ``points`` may cross.

        -1 pads the rows. The margins cover tracks from the beam spot crossing the layer's
        envelope at up to ``_MAX_TANGENTIAL_SLOPE`` transverse slope.
        """
        phi = np.arctan2(points[:, 1], points[:, 0])
        barrel = self.layer_is_barrel[layer]
        b = np.where(barrel, points[:, 2], np.hypot(points[:, 0], points[:, 1]))
        return self.lookup_table[self.lookup_bin(layer, phi, b)]


def _module_key(volume: np.ndarray, layer: np.ndarray, module: np.ndarray) -> np.ndarray:
    return (
        volume.astype(np.int64) * 2**40 + layer.astype(np.int64) * 2**24 + module.astype(np.int64)
    )


@functools.lru_cache(maxsize=4)
def _load_cached(path: str | None) -> Detector:
    from trackgnn.io import default_detectors_path, read_detectors

    frame = read_detectors(path)
    return _build(frame, str(path if path is not None else default_detectors_path()))


def _outline_points(
    center: np.ndarray, rotation: np.ndarray, min_hu: np.ndarray, max_hu: np.ndarray, hv: np.ndarray
) -> np.ndarray:
    """(M, 45, 3) global points of a 9 x 5 grid (u x v) over each module's mid-plane.

    A grid rather than the corners: the distance to the beam axis is convex on a plane, so its
    minimum over a tilted barrel module lies inside the module, not on a corner.
    """
    u_grid, v_grid = np.meshgrid(np.linspace(-1.0, 1.0, 9), np.linspace(-1.0, 1.0, 5))
    v_frac, u_sign = v_grid.ravel(), u_grid.ravel()
    v = v_frac[None, :] * hv[:, None]
    hu = min_hu[:, None] + (max_hu - min_hu)[:, None] * (v + hv[:, None]) / (2.0 * hv[:, None])
    u = u_sign[None, :] * hu
    local = np.stack([u, v, np.zeros_like(u)], axis=-1)  # (M, 8, 3)
    return np.einsum("mij,mkj->mki", rotation, local) + center[:, None, :]


def _check_geometry(frame: pd.DataFrame, source: str) -> None:
    for column in ("module_t", "module_minhu", "module_maxhu", "module_hv", "pitch_u", "pitch_v"):
        bad = frame[column].to_numpy() <= 0
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise InputError(source, f"column {column} row {row} must be positive")
    rot = frame[
        ["rot_xu", "rot_xv", "rot_xw", "rot_yu", "rot_yv", "rot_yw", "rot_zu", "rot_zv", "rot_zw"]
    ].to_numpy(np.float64)
    rot = rot.reshape(-1, 3, 3)
    err = np.abs(np.einsum("mji,mjk->mik", rot, rot) - np.eye(3)).max(axis=(1, 2))
    bad = err > 1e-3
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise InputError(source, f"row {row}: rotation is not orthonormal (error {err[row]:.2g})")


def _build(frame: pd.DataFrame, source: str) -> Detector:
    """Derive layers, envelopes and the module lookup from a detectors table."""
    _check_geometry(frame, source)
    frame = frame.sort_values(["volume_id", "layer_id", "module_id"], kind="stable")
    volume_id = frame["volume_id"].to_numpy(np.int32)
    layer_id = frame["layer_id"].to_numpy(np.int32)
    module_id = frame["module_id"].to_numpy(np.int32)
    center = frame[["cx", "cy", "cz"]].to_numpy(np.float64)
    rotation = (
        frame[
            [
                "rot_xu",
                "rot_xv",
                "rot_xw",
                "rot_yu",
                "rot_yv",
                "rot_yw",
                "rot_zu",
                "rot_zv",
                "rot_zw",
            ]
        ]
        .to_numpy(np.float64)
        .reshape(-1, 3, 3)
    )
    # The file's rotations are rounded to ~6 digits; use the nearest exactly orthonormal frames so
    # that local -> global -> local is exact (polar decomposition).
    left, _, right = np.linalg.svd(rotation)
    rotation = left @ right
    thickness = frame["module_t"].to_numpy(np.float64)
    min_hu = frame["module_minhu"].to_numpy(np.float64)
    max_hu = frame["module_maxhu"].to_numpy(np.float64)
    hv = frame["module_hv"].to_numpy(np.float64)
    pitch_u = frame["pitch_u"].to_numpy(np.float64)
    pitch_v = frame["pitch_v"].to_numpy(np.float64)

    pair_key = volume_id.astype(np.int64) * 2**32 + layer_id.astype(np.int64)
    layer_keys, module_layer, layer_counts = np.unique(
        pair_key, return_inverse=True, return_counts=True
    )
    module_layer = module_layer.astype(np.int32)
    n_layers = len(layer_keys)
    layer_volume = (layer_keys // 2**32).astype(np.int32)
    layer_layer = (layer_keys % 2**32).astype(np.int32)

    abs_wz = np.abs(rotation[:, 2, 2])
    endcap_share = np.bincount(
        module_layer, weights=(abs_wz > _ENDCAP_MIN_ABS_WZ), minlength=n_layers
    )
    layer_is_barrel = endcap_share < 0.5 * layer_counts
    mixed = (endcap_share > 0) & (endcap_share < layer_counts)
    if mixed.any():
        bad = int(np.flatnonzero(mixed)[0])
        raise InputError(
            source,
            f"volume {layer_volume[bad]} layer {layer_layer[bad]} mixes barrel and endcap modules",
        )

    outline = _outline_points(center, rotation, min_hu, max_hu, hv)  # (M, 45, 3)
    outline_r = np.hypot(outline[..., 0], outline[..., 1])
    outline_z = outline[..., 2]
    mod_rmin, mod_rmax = outline_r.min(axis=1), outline_r.max(axis=1)
    mod_zmin, mod_zmax = outline_z.min(axis=1), outline_z.max(axis=1)

    def per_layer(values: np.ndarray, reduce: np.ufunc, init: float) -> np.ndarray:
        out = np.full(n_layers, init)
        reduce.at(out, module_layer, values)
        return out

    layer_rmin = per_layer(mod_rmin, np.minimum, np.inf)
    layer_rmax = per_layer(mod_rmax, np.maximum, -np.inf)
    layer_zmin = per_layer(mod_zmin, np.minimum, np.inf)
    layer_zmax = per_layer(mod_zmax, np.maximum, -np.inf)
    center_r = np.hypot(center[:, 0], center[:, 1])
    layer_radius = np.bincount(module_layer, weights=center_r) / layer_counts
    layer_z = np.bincount(module_layer, weights=center[:, 2]) / layer_counts
    layer_thickness = np.array(
        [np.median(thickness[module_layer == i]) for i in range(n_layers)], dtype=np.float64
    )

    aspect = pitch_v / pitch_u
    is_pixel = aspect < _STRIP_MIN_ASPECT
    n_channels_u = np.ceil(2.0 * np.maximum(min_hu, max_hu) / pitch_u - 1e-6).astype(np.int32)
    n_channels_v = np.ceil(2.0 * hv / pitch_v - 1e-6).astype(np.int32)

    lookup = _build_lookup(
        outline,
        center,
        module_layer,
        layer_is_barrel,
        layer_rmin,
        layer_rmax,
        layer_zmin,
        layer_zmax,
        layer_radius,
        layer_z,
    )
    return Detector(
        source=source,
        volume_id=volume_id,
        layer_id=layer_id,
        module_id=module_id,
        module_layer=module_layer,
        center=center,
        rotation=rotation,
        thickness=thickness,
        min_hu=min_hu,
        max_hu=max_hu,
        hv=hv,
        pitch_u=pitch_u,
        pitch_v=pitch_v,
        is_pixel=is_pixel,
        n_channels_u=n_channels_u,
        n_channels_v=n_channels_v,
        layer_volume=layer_volume,
        layer_layer=layer_layer,
        layer_is_barrel=layer_is_barrel,
        layer_radius=layer_radius,
        layer_z=layer_z,
        layer_rmin=layer_rmin,
        layer_rmax=layer_rmax,
        layer_zmin=layer_zmin,
        layer_zmax=layer_zmax,
        layer_n_modules=layer_counts.astype(np.int32),
        layer_thickness=layer_thickness,
        **lookup,
    )


def _build_lookup(
    outline: np.ndarray,
    center: np.ndarray,
    module_layer: np.ndarray,
    layer_is_barrel: np.ndarray,
    layer_rmin: np.ndarray,
    layer_rmax: np.ndarray,
    layer_zmin: np.ndarray,
    layer_zmax: np.ndarray,
    layer_radius: np.ndarray,
    layer_z: np.ndarray,
) -> dict[str, np.ndarray]:
    """Per layer, a (phi, b) grid whose bins list every module a nearby track may cross.

    Each module covers the (phi, b) box of its outline, widened by margins for the distance
    between the point where the lookup is made (a reference surface inside the layer's envelope)
    and the module's own plane: half the envelope thickness times the track slope.
    """
    n_layers = len(layer_is_barrel)
    barrel_m = layer_is_barrel[module_layer]
    phi_c = np.arctan2(center[:, 1], center[:, 0])
    outline_phi = np.arctan2(outline[..., 1], outline[..., 0])
    dphi = (outline_phi - phi_c[:, None] + np.pi) % (2.0 * np.pi) - np.pi
    outline_r = np.hypot(outline[..., 0], outline[..., 1])
    outline_b = np.where(barrel_m[:, None], outline[..., 2], outline_r)
    phi_lo = phi_c + dphi.min(axis=1)
    phi_hi = phi_c + dphi.max(axis=1)
    b_lo = outline_b.min(axis=1)
    b_hi = outline_b.max(axis=1)
    r_min = outline_r.min(axis=1)

    # Largest distance, along r (barrel) or z (disk), between the layer's reference surface (where
    # lookups are made) and a point of one of its modules.
    half_env = np.where(
        layer_is_barrel,
        np.maximum(layer_radius - layer_rmin, layer_rmax - layer_radius),
        np.maximum(layer_z - layer_zmin, layer_zmax - layer_z),
    )[module_layer]
    abs_z_far = np.abs(outline[..., 2]).max(axis=1)
    abs_z_near = np.abs(outline[..., 2]).min(axis=1)
    r_far = outline_r.max(axis=1)
    # Longitudinal slope of a beam-spot track at the module: dz/dr (barrel) or dr/dz (disk).
    disk_dz = np.maximum(abs_z_near - _VERTEX_Z_WINDOW_MM, 0.25 * abs_z_near)
    slope_b = np.where(
        barrel_m,
        (abs_z_far + _VERTEX_Z_WINDOW_MM) / np.maximum(r_min, 1.0),
        r_far / np.maximum(disk_dz, 1.0),
    )
    margin_b = half_env * slope_b + _BASE_MARGIN_MM
    margin_arc = half_env * _MAX_TANGENTIAL_SLOPE + _BASE_MARGIN_MM
    margin_phi = margin_arc / np.maximum(r_min, 1.0)
    phi_lo -= margin_phi
    phi_hi += margin_phi
    b_lo -= margin_b
    b_hi += margin_b

    offsets = np.zeros(n_layers, dtype=np.int64)
    nphi = np.zeros(n_layers, dtype=np.int64)
    nb = np.zeros(n_layers, dtype=np.int64)
    bmin = np.zeros(n_layers)
    bwidth = np.zeros(n_layers)
    bins_of_module = []
    module_of_bin = []
    total = 0
    for layer in range(n_layers):
        mods = np.flatnonzero(module_layer == layer)
        # Bins of about half a module (unwidened) in each direction: few candidates per bin.
        span_phi = np.median(dphi[mods].max(axis=1) - dphi[mods].min(axis=1))
        span_b = np.median(outline_b[mods].max(axis=1) - outline_b[mods].min(axis=1))
        n_phi = int(np.clip(np.round(2.0 * (2.0 * np.pi) / max(span_phi, 1e-3)), 4, 8192))
        lo, hi = float(b_lo[mods].min()), float(b_hi[mods].max())
        n_b = int(np.clip(np.ceil((hi - lo) / max(0.5 * span_b, 1e-3)), 1, 8192))
        width = (hi - lo) / n_b
        offsets[layer], nphi[layer], nb[layer], bmin[layer], bwidth[layer] = (
            total,
            n_phi,
            n_b,
            lo,
            width,
        )
        # Bin ranges per module (phi may wrap; b is clipped to the grid).
        i0 = np.floor((phi_lo[mods] + np.pi) / (2.0 * np.pi) * n_phi).astype(np.int64)
        i1 = np.floor((phi_hi[mods] + np.pi) / (2.0 * np.pi) * n_phi).astype(np.int64)
        j0 = np.clip(np.floor((b_lo[mods] - lo) / width).astype(np.int64), 0, n_b - 1)
        j1 = np.clip(np.floor((b_hi[mods] - lo) / width).astype(np.int64), 0, n_b - 1)
        count_phi = np.minimum(i1 - i0 + 1, n_phi)
        count_b = j1 - j0 + 1
        count = count_phi * count_b
        owner = np.repeat(np.arange(len(mods)), count)
        within = np.arange(count.sum()) - np.repeat(np.cumsum(count) - count, count)
        iphi = (i0[owner] + within // count_b[owner]) % n_phi
        ib = j0[owner] + within % count_b[owner]
        bins_of_module.append(total + iphi * n_b + ib)
        module_of_bin.append(mods[owner])
        total += n_phi * n_b
    bins = np.concatenate(bins_of_module)
    modules = np.concatenate(module_of_bin)
    order = np.lexsort((modules, bins))
    bins, modules = bins[order], modules[order]
    per_bin = np.bincount(bins, minlength=total)
    rank = np.arange(len(bins)) - np.repeat(np.cumsum(per_bin) - per_bin, per_bin)
    table = np.full((total, int(per_bin.max())), -1, dtype=np.int32)
    table[bins, rank] = modules
    return {
        "lookup_offset": offsets,
        "lookup_nphi": nphi,
        "lookup_nb": nb,
        "lookup_bmin": bmin,
        "lookup_bwidth": bwidth,
        "lookup_table": table,
    }
