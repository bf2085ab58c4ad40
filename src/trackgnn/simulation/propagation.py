"""Vectorised helix propagation of charged particles through the real module geometry.

All particles of a batch advance together, step by step. Within a step the field is taken constant
(evaluated at the step's midpoint), so the track is an exact helix about the local field direction
and crossings with module planes are solved on that helix by Newton iterations. A step ends at the
earliest module crossing, where multiple scattering (Highland) kinks the direction and a hadronic
interaction may end the particle; the next step starts there, so every crossing of overlapping
modules is found in order. Particles are followed over half a turn of their helix (the outgoing
leg: TrackML has no looper return legs, at most ~17 hits per particle) or until they leave the
detector.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from trackgnn.geometry import Detector

# kappa [1/mm] = C_LIGHT * B [T] * q / p [GeV]
C_LIGHT = 0.299792458e-3

# Measured material (fraction of X0 at normal incidence) per layer, by sensor thickness (mm):
# pixel 0.15 mm -> 0.5 %, short strip 0.25 mm -> 0.8 %, long strip 0.35 mm -> 1.1 %.
_THICKNESS_MM = np.array([0.15, 0.25, 0.35])
_LAYER_X0 = np.array([0.005, 0.008, 0.011])
# Hadronic interaction probability per layer at normal incidence, by the same sensor thickness.
# The files give two figures, not the layers' nuclear material: 21 % of particles are
# secondaries, and their median production radius is 175 mm, the outer edge of the pixel volumes,
# so about half of them come from the strip layers. Probabilities in proportion to the radiation
# length (0.41 / 0.65 / 0.89 %) gave 22 % at a median of 108 mm; these fit both figures.
_INTERACTION_PROBABILITY = np.array([0.0032, 0.0076, 0.0137])

# Step control: at most this bending per step (rad) and this length (mm).
_MAX_BEND_PER_STEP = 0.3
_MAX_STEP_MM = 100.0
# Crossings closer than this to the step start (mm) belong to the previous step.
_MIN_CROSSING_S = 1e-6
_NEWTON_ITERATIONS = 4
_NEWTON_TOLERANCE_MM = 1e-4
# Path-length factor cap for grazing crossings (material and interaction probability).
_MAX_PATH_FACTOR = 10.0
_MAX_ITERATIONS = 2000
# Particles stop after half a turn of their helix (minus rounding).
_HALF_TURN = np.pi - 1e-9


@dataclass(frozen=True)
class Material:
    """Material seen by tracks: per-layer sensors and services, the beam pipe."""

    layer_x0: np.ndarray  # (L,) fraction of a radiation length at normal incidence
    interaction_probability: np.ndarray  # (L,) hadronic interaction probability at normal incidence
    beam_pipe_radius: float = 25.0
    beam_pipe_x0: float = 0.0025

    @classmethod
    def for_detector(cls, detector: Detector) -> Material:
        """Material of ``detector`` from its sensor thicknesses: radiation lengths from the
        measured TrackML scattering kinks, interaction probabilities from its secondaries."""
        layer_x0 = np.interp(detector.layer_thickness, _THICKNESS_MM, _LAYER_X0)
        prob = np.interp(detector.layer_thickness, _THICKNESS_MM, _INTERACTION_PROBABILITY)
        return cls(layer_x0=layer_x0, interaction_probability=prob)


@dataclass
class PropagationResult:
    """Module crossings and hadronic interactions of one propagated batch."""

    # Crossings, in the order they happened per particle.
    particle: np.ndarray  # (C,) int64 index of the particle in the caller's table
    module: np.ndarray  # (C,) int32 module index
    position: np.ndarray  # (C, 3) crossing of the module mid-plane (mm)
    direction: np.ndarray  # (C, 3) unit direction there
    momentum: np.ndarray  # (C,) momentum magnitude (GeV)
    # Interactions: the particle ends there; the caller may spawn secondaries.
    interaction_particle: np.ndarray  # (I,) int64
    interaction_position: np.ndarray  # (I, 3)
    interaction_direction: np.ndarray  # (I, 3)
    interaction_momentum: np.ndarray  # (I,)
    n_steps: int


class _Helix:
    """Helices of a set of particles in locally constant fields: x(s), t(s) from the step start.

    With b the field direction, t = (t.b) b + t_perp and w = t_perp x b, the track after path s
    (phase phi = k s) is x(s) = x0 + (t.b) b s + t_perp sin(phi) / k + w (1 - cos(phi)) / k.
    """

    def __init__(self, pos: np.ndarray, direction: np.ndarray, field: np.ndarray, q, p) -> None:
        bmag = np.sqrt(np.einsum("ij,ij->i", field, field))
        safe = bmag > 1e-12
        b = np.zeros_like(field)
        b[:, 2] = 1.0
        b[safe] = field[safe] / bmag[safe, None]
        k = C_LIGHT * bmag * q / p
        # A vanishing k (no field) would divide by zero; 1e-12 /mm bends by 1e-9 rad per metre.
        self.k = np.where(np.abs(k) < 1e-12, np.where(k < 0, -1e-12, 1e-12), k)
        self.pos = pos
        self.b = b
        self.tb = np.einsum("ij,ij->i", direction, b)
        self.t_perp = direction - self.tb[:, None] * b
        self.w = np.cross(self.t_perp, b)

    def curvature(self) -> np.ndarray:
        """Curvature (1/mm) of each helix."""
        return np.abs(self.k) * np.sqrt(np.einsum("ij,ij->i", self.t_perp, self.t_perp))

    def at(self, s: np.ndarray, idx: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Positions and unit directions after path length ``s`` (of particles ``idx``)."""
        if idx is None:
            k, pos, b, tb, tp, w = self.k, self.pos, self.b, self.tb, self.t_perp, self.w
        else:
            k, pos, b = self.k[idx], self.pos[idx], self.b[idx]
            tb, tp, w = self.tb[idx], self.t_perp[idx], self.w[idx]
        phi = k * s
        sin_phi, cos_phi = np.sin(phi), np.cos(phi)
        # 1 - cos(phi) as 2 sin^2(phi / 2): no cancellation for small phi.
        one_minus_cos = 2.0 * np.sin(0.5 * phi) ** 2
        x = (
            pos
            + b * (tb * s)[:, None]
            + tp * (sin_phi / k)[:, None]
            + w * (one_minus_cos / k)[:, None]
        )
        t = b * tb[:, None] + tp * cos_phi[:, None] + w * sin_phi[:, None]
        return x, t

    def plane_crossing(
        self,
        idx: np.ndarray,
        normal: np.ndarray,
        point: np.ndarray,
        s_max: np.ndarray,
        iterations: int = _NEWTON_ITERATIONS,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Path length to the plane (normal, point) for helices ``idx``, and whether it converged.

        Newton on f(s) = n . (x(s) - c) with x(s) the exact helix, started from the straight line.
        """
        k = self.k[idx]
        a0 = np.einsum("ij,ij->i", normal, self.pos[idx] - point)
        a1 = self.tb[idx] * np.einsum("ij,ij->i", normal, self.b[idx])
        a2 = np.einsum("ij,ij->i", normal, self.t_perp[idx])
        a3 = np.einsum("ij,ij->i", normal, self.w[idx])
        slope = a1 + a2
        ok = np.abs(slope) > 1e-9
        s = np.where(ok, -a0 / np.where(ok, slope, 1.0), 0.0)
        s = np.clip(s, -s_max, 2.0 * s_max)

        def value(s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            phi = k * s
            sin_phi = np.sin(phi)
            one_minus_cos = 2.0 * np.sin(0.5 * phi) ** 2
            f = a0 + a1 * s + (a2 * sin_phi + a3 * one_minus_cos) / k
            return f, sin_phi, 1.0 - one_minus_cos

        for _ in range(iterations):
            f, sin_phi, cos_phi = value(s)
            df = a1 + a2 * cos_phi + a3 * sin_phi
            good = np.abs(df) > 1e-9
            s = s - np.where(good, f / np.where(good, df, 1.0), 0.0)
        f, _, _ = value(s)
        return s, ok & (np.abs(f) < _NEWTON_TOLERANCE_MM)

    def cylinder_crossing(self, idx: np.ndarray, radius: np.ndarray, s_max: np.ndarray):
        """Path length (clipped to [0, s_max]) where helices ``idx`` reach ``radius``."""
        pos = self.pos[idx]
        t0 = self.tb[idx, None] * self.b[idx] + self.t_perp[idx]
        # Straight-line start: |x_T + s t_T| = R.
        a = t0[:, 0] ** 2 + t0[:, 1] ** 2
        bq = pos[:, 0] * t0[:, 0] + pos[:, 1] * t0[:, 1]
        c = pos[:, 0] ** 2 + pos[:, 1] ** 2 - radius**2
        disc = bq * bq - a * c
        root = np.sqrt(np.maximum(disc, 0.0))
        s_out = (-bq + root) / np.maximum(a, 1e-12)
        s_in = (-bq - root) / np.maximum(a, 1e-12)
        s = np.where(s_in > 0, s_in, s_out)
        s = np.where(disc > 0, s, 0.5 * s_max)
        s = np.clip(s, 0.0, s_max)
        for _ in range(3):
            x, t = self.at(s, idx)
            f = x[:, 0] ** 2 + x[:, 1] ** 2 - radius**2
            df = 2.0 * (x[:, 0] * t[:, 0] + x[:, 1] * t[:, 1])
            good = np.abs(df) > 1e-9
            s = np.clip(s - np.where(good, f / np.where(good, df, 1.0), 0.0), 0.0, s_max)
        return s


@dataclass(frozen=True)
class _Slabs:
    """Layers grouped into disjoint intervals of one coordinate (r for barrels, z for disks)."""

    lo: np.ndarray  # (S,) sorted interval starts
    hi: np.ndarray  # (S,) interval ends (sorted too: the intervals are disjoint)
    members: np.ndarray  # (S, m) layer indices, -1 padded

    @classmethod
    def build(cls, layers: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> _Slabs:
        order = np.argsort(lo[layers], kind="stable")
        layers = layers[order]
        groups: list[list[int]] = []
        bounds: list[list[float]] = []
        for layer in layers:
            if groups and lo[layer] <= bounds[-1][1]:
                groups[-1].append(int(layer))
                bounds[-1][1] = max(bounds[-1][1], float(hi[layer]))
            else:
                groups.append([int(layer)])
                bounds.append([float(lo[layer]), float(hi[layer])])
        width = max((len(g) for g in groups), default=1)
        members = np.full((len(groups), width), -1, dtype=np.int64)
        for i, group in enumerate(groups):
            members[i, : len(group)] = group
        arr = np.array(bounds, dtype=np.float64).reshape(-1, 2)
        return cls(lo=arr[:, 0], hi=arr[:, 1], members=members)

    def pairs(self, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(item, layer) pairs whose coordinate range [lo, hi] overlaps a member layer's slab."""
        first = np.searchsorted(self.hi, lo, side="left")
        last = np.searchsorted(self.lo, hi, side="right")
        count = np.maximum(last - first, 0)
        item = np.repeat(np.arange(len(lo)), count)
        slab = np.repeat(first, count) + (
            np.arange(len(item)) - np.repeat(np.cumsum(count) - count, count)
        )
        layer = self.members[slab]  # (P, m)
        item = np.repeat(item, layer.shape[1])
        layer = layer.ravel()
        keep = layer >= 0
        return item[keep], layer[keep]


class Propagator:
    """Propagates batches of particles through one detector in one field with one material."""

    # Envelope margin (mm) when matching a step's coordinate range to layers.
    _ENVELOPE_MARGIN = 0.5

    def __init__(self, detector: Detector, field, material: Material) -> None:
        self.detector = detector
        self.field = field
        self.material = material
        d = detector
        m = self._ENVELOPE_MARGIN
        barrel = np.flatnonzero(d.layer_is_barrel)
        disks = np.flatnonzero(~d.layer_is_barrel)
        self.barrel_slabs = _Slabs.build(barrel, d.layer_rmin - m, d.layer_rmax + m)
        self.disk_slabs = _Slabs.build(disks, d.layer_zmin - m, d.layer_zmax + m)
        self.r_out = float(d.layer_rmax.max()) + 1.0
        self.z_out = float(np.abs(np.concatenate([d.layer_zmin, d.layer_zmax])).max()) + 1.0
        self.module_x0 = material.layer_x0[d.module_layer]
        self.module_pint = material.interaction_probability[d.module_layer]

    # ------------------------------------------------------------------ scattering
    @staticmethod
    def _kink(direction: np.ndarray, theta0: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Directions deflected by two independent Gaussian projected angles of width theta0."""
        ref = np.zeros_like(direction)
        ref[:, 2] = 1.0
        near_z = np.abs(direction[:, 2]) > 0.9
        ref[near_z] = [1.0, 0.0, 0.0]
        e1 = np.cross(direction, ref)
        e1 /= np.linalg.norm(e1, axis=1, keepdims=True)
        e2 = np.cross(direction, e1)
        angles = rng.standard_normal((len(direction), 2)) * theta0[:, None]
        out = direction + np.tan(angles[:, :1]) * e1 + np.tan(angles[:, 1:]) * e2
        return out / np.linalg.norm(out, axis=1, keepdims=True)

    @staticmethod
    def highland(p: np.ndarray, mass: np.ndarray, x_over_x0: np.ndarray) -> np.ndarray:
        """Highland width (rad) of the projected scattering angle for unit charge."""
        beta = p / np.sqrt(p * p + mass * mass)
        x = np.maximum(x_over_x0, 1e-9)
        return 0.0136 / (beta * p) * np.sqrt(x) * (1.0 + 0.038 * np.log(x / (beta * beta)))

    # ------------------------------------------------------------------ crossings in one step
    def _crossings(
        self,
        helix: _Helix,
        x1: np.ndarray,
        h: np.ndarray,
        last_module: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Module crossings within (0, h] of each helix: (particle, module, s)."""
        d = self.detector
        x0 = helix.pos
        r0 = np.hypot(x0[:, 0], x0[:, 1])
        r1 = np.hypot(x1[:, 0], x1[:, 1])
        rlo, rhi = np.minimum(r0, r1), np.maximum(r0, r1)
        zlo, zhi = np.minimum(x0[:, 2], x1[:, 2]), np.maximum(x0[:, 2], x1[:, 2])
        m = self._ENVELOPE_MARGIN
        bi, bl = self.barrel_slabs.pairs(rlo, rhi)
        keep = (zhi[bi] >= d.layer_zmin[bl] - m) & (zlo[bi] <= d.layer_zmax[bl] + m)
        bi, bl = bi[keep], bl[keep]
        di, dl = self.disk_slabs.pairs(zlo, zhi)
        keep = (rhi[di] >= d.layer_rmin[dl] - m) & (rlo[di] <= d.layer_rmax[dl] + m)
        di, dl = di[keep], dl[keep]

        # Reference points: where each helix meets the layer's mean cylinder or disk plane.
        s_b = helix.cylinder_crossing(bi, d.layer_radius[bl], h[bi])
        disk_normal = np.zeros((len(di), 3))
        disk_normal[:, 2] = 1.0
        disk_point = np.zeros((len(di), 3))
        disk_point[:, 2] = d.layer_z[dl]
        s_d, _ = helix.plane_crossing(di, disk_normal, disk_point, h[di])
        s_d = np.clip(s_d, 0.0, h[di])
        pair_particle = np.concatenate([bi, di])
        pair_layer = np.concatenate([bl, dl])
        ref_points, _ = helix.at(np.concatenate([s_b, s_d]), pair_particle)

        cand = d.candidate_modules(pair_layer, ref_points)  # (P, K)
        valid = (cand >= 0) & (cand != last_module[pair_particle, None])
        row, col = np.nonzero(valid)
        particle = pair_particle[row]
        module = cand[row, col].astype(np.int64)
        s, ok = helix.plane_crossing(particle, d.axis_w[module], d.center[module], h[particle])
        ok &= (s > _MIN_CROSSING_S) & (s <= h[particle])
        particle, module, s = particle[ok], module[ok], s[ok]
        x, _ = helix.at(s, particle)
        local = np.einsum("nij,ni->nj", d.rotation[module], x - d.center[module])
        inside = d.inside(module, local[:, 0], local[:, 1])
        return particle[inside], module[inside], s[inside]

    # ------------------------------------------------------------------ main loop
    def propagate(
        self,
        position: np.ndarray,
        direction: np.ndarray,
        momentum: np.ndarray,
        charge: np.ndarray,
        mass: np.ndarray,
        rng: np.random.Generator,
    ) -> PropagationResult:
        """Propagate particles (positions mm, unit directions, momenta GeV) through the detector.

        Particles inside the beam pipe first cross it (one scattering kink). Returned particle
        indices refer to the rows of the inputs.
        """
        d = self.detector
        n = len(momentum)
        pos = np.asarray(position, dtype=np.float64).copy()
        tdir = np.asarray(direction, dtype=np.float64).copy()
        tdir /= np.linalg.norm(tdir, axis=1, keepdims=True)
        p = np.asarray(momentum, dtype=np.float64).copy()
        q = np.asarray(charge, dtype=np.float64).copy()
        mass = np.asarray(mass, dtype=np.float64).copy()
        index = np.arange(n, dtype=np.int64)
        turned = np.zeros(n)
        last_module = np.full(n, -1, dtype=np.int64)

        pos, tdir, turned = self._cross_beam_pipe(pos, tdir, p, q, mass, turned, rng)

        out_particle, out_module, out_pos, out_dir, out_p = [], [], [], [], []
        int_particle, int_pos, int_dir, int_p = [], [], [], []
        steps = 0
        alive = self._inside(pos) & (turned < _HALF_TURN)
        while alive.any() and steps < _MAX_ITERATIONS:
            steps += 1
            if not alive.all():
                pos, tdir, p, q, mass = pos[alive], tdir[alive], p[alive], q[alive], mass[alive]
                index, turned, last_module = index[alive], turned[alive], last_module[alive]
            # Field at the midpoint of a full-length step: the solenoid varies over ~1 m, so
            # shorter steps (ended by a crossing) see it to better than 1e-3.
            helix = _Helix(pos, tdir, self.field(pos + 0.5 * _MAX_STEP_MM * tdir), q, p)
            h = np.minimum(_MAX_STEP_MM, _MAX_BEND_PER_STEP / np.maximum(helix.curvature(), 1e-12))
            # End exactly at half a turn: the transverse direction turns at |k b_z| per unit path.
            turn_rate = np.abs(helix.k * helix.b[:, 2]) + 1e-15
            h = np.minimum(h, (np.pi - turned) / turn_rate + 1e-9)
            x1, _ = helix.at(h)
            particle, module, s = self._crossings(helix, x1, h, last_module)

            # Earliest crossing per particle ends its step.
            order = np.lexsort((s, particle))
            particle, module, s = particle[order], module[order], s[order]
            first = np.ones(len(particle), dtype=bool)
            first[1:] = particle[1:] != particle[:-1]
            hit_particle, hit_module, hit_s = particle[first], module[first], s[first]
            step = h.copy()
            step[hit_particle] = hit_s
            new_pos, new_dir = helix.at(step)

            cross = tdir[:, 0] * new_dir[:, 1] - tdir[:, 1] * new_dir[:, 0]
            dot = tdir[:, 0] * new_dir[:, 0] + tdir[:, 1] * new_dir[:, 1]
            turned = turned + np.abs(np.arctan2(cross, dot))
            pos, tdir = new_pos, new_dir

            alive = np.ones(len(p), dtype=bool)
            if len(hit_particle):
                hp = hit_particle
                out_particle.append(index[hp])
                out_module.append(hit_module)
                out_pos.append(pos[hp].copy())
                out_dir.append(tdir[hp].copy())
                out_p.append(p[hp].copy())
                last_module[hp] = hit_module
                cos_inc = np.abs(np.einsum("ij,ij->i", tdir[hp], d.axis_w[hit_module]))
                path = np.minimum(1.0 / np.maximum(cos_inc, 1e-9), _MAX_PATH_FACTOR)
                theta0 = self.highland(p[hp], mass[hp], self.module_x0[hit_module] * path)
                tdir[hp] = self._kink(tdir[hp], theta0, rng)
                interacts = rng.random(len(hp)) < self.module_pint[hit_module] * path
                if interacts.any():
                    ip = hp[interacts]
                    int_particle.append(index[ip])
                    int_pos.append(pos[ip].copy())
                    int_dir.append(tdir[ip].copy())
                    int_p.append(p[ip].copy())
                    alive[ip] = False
            alive &= self._inside(pos) & (turned < _HALF_TURN)

        def cat(parts: list[np.ndarray], shape: tuple[int, ...], dtype) -> np.ndarray:
            return np.concatenate(parts) if parts else np.zeros(shape, dtype=dtype)

        return PropagationResult(
            particle=cat(out_particle, (0,), np.int64),
            module=cat(out_module, (0,), np.int64),
            position=cat(out_pos, (0, 3), np.float64),
            direction=cat(out_dir, (0, 3), np.float64),
            momentum=cat(out_p, (0,), np.float64),
            interaction_particle=cat(int_particle, (0,), np.int64),
            interaction_position=cat(int_pos, (0, 3), np.float64),
            interaction_direction=cat(int_dir, (0, 3), np.float64),
            interaction_momentum=cat(int_p, (0,), np.float64),
            n_steps=steps,
        )

    def _inside(self, pos: np.ndarray) -> np.ndarray:
        return (np.hypot(pos[:, 0], pos[:, 1]) < self.r_out) & (np.abs(pos[:, 2]) < self.z_out)

    def _cross_beam_pipe(self, pos, tdir, p, q, mass, turned, rng):
        """Move particles produced inside the beam pipe onto it and apply its scattering kink."""
        radius = self.material.beam_pipe_radius
        inner = np.flatnonzero(np.hypot(pos[:, 0], pos[:, 1]) < radius)
        if len(inner) == 0:
            return pos, tdir, turned
        helix = _Helix(pos[inner], tdir[inner], self.field(pos[inner]), q[inner], p[inner])
        # Up to half a turn of the helix phase: a particle curling inside the pipe never reaches it.
        s_max = np.minimum(np.pi / np.maximum(np.abs(helix.k), 1e-12), 1e5)
        s = helix.cylinder_crossing(np.arange(len(inner)), np.full(len(inner), radius), s_max)
        x, t = helix.at(s)
        reached = np.abs(np.hypot(x[:, 0], x[:, 1]) - radius) < 1e-3
        cross = tdir[inner, 0] * t[:, 1] - tdir[inner, 1] * t[:, 0]
        dot = tdir[inner, 0] * t[:, 0] + tdir[inner, 1] * t[:, 1]
        turned = turned.copy()
        turned[inner] += np.abs(np.arctan2(cross, dot))
        turned[inner[~reached]] = np.pi  # never leaves the pipe: stop it
        normal = np.stack([x[:, 0], x[:, 1], np.zeros(len(x))], axis=1) / radius
        cos_inc = np.abs(np.einsum("ij,ij->i", t, normal))
        path = np.minimum(1.0 / np.maximum(cos_inc, 1e-9), _MAX_PATH_FACTOR)
        theta0 = self.highland(p[inner], mass[inner], self.material.beam_pipe_x0 * path)
        pos = pos.copy()
        tdir = tdir.copy()
        pos[inner] = x
        tdir[inner] = self._kink(t, theta0, rng) if self.material.beam_pipe_x0 > 0 else t
        return pos, tdir, turned
