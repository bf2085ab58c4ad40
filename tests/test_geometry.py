"""The TrackML geometry as derived from detectors.csv (figures of the real TrackML detector)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from trackgnn.errors import InputError
from trackgnn.geometry import Detector
from trackgnn.io import read_detectors


@pytest.fixture(scope="module")
def detector() -> Detector:
    return Detector.load()


def _layers(detector: Detector, volume: int) -> np.ndarray:
    return np.flatnonzero(detector.layer_volume == volume)


def test_counts(detector: Detector) -> None:
    assert detector.n_modules == 18728
    assert len(detector.volumes) == 9
    assert detector.n_layers == 48
    assert int(detector.layer_is_barrel.sum()) == 10
    assert int((~detector.layer_is_barrel).sum()) == 38


def test_load_is_cached(detector: Detector) -> None:
    assert Detector.load() is detector


@pytest.mark.parametrize(
    ("volume", "radii", "half_length", "modules", "thickness", "pitch"),
    [
        (8, [32, 72, 116, 172], 491, [224, 448, 728, 1092], 0.15, (0.05, 0.05625)),
        (13, [260, 360, 500, 660], 1084, [840, 1176, 1638, 2142], 0.25, (0.08, 1.2)),
        (17, [820, 1020], 1084, [2520, 3192], 0.35, (0.12, 10.8)),
    ],
)
def test_barrel_layers(detector, volume, radii, half_length, modules, thickness, pitch) -> None:
    layers = _layers(detector, volume)
    assert detector.layer_is_barrel[layers].all()
    # Mean module radius within 0.5 mm of the nominal radius (staggering is +-0.25 / 1.5 mm).
    np.testing.assert_allclose(detector.layer_radius[layers], radii, atol=0.5)
    np.testing.assert_allclose(detector.layer_zmax[layers], half_length, atol=1.0)
    np.testing.assert_allclose(detector.layer_zmin[layers], -half_length, atol=1.0)
    assert detector.layer_n_modules[layers].tolist() == modules
    mods = np.isin(detector.module_layer, layers)
    np.testing.assert_allclose(detector.thickness[mods], thickness)
    np.testing.assert_allclose(detector.pitch_u[mods], pitch[0])
    np.testing.assert_allclose(detector.pitch_v[mods], pitch[1])


@pytest.mark.parametrize(
    ("volumes", "abs_z", "modules", "pixel"),
    [
        ((7, 9), [600, 700, 820, 960, 1100, 1300, 1500], 108, True),
        ((12, 14), [1219, 1499, 1799, 2149, 2549, 2949], 170, False),
        ((16, 18), [1220, 1500, 1800, 2150, 2550, 2950], 98, False),
    ],
)
def test_endcap_disks(detector, volumes, abs_z, modules, pixel) -> None:
    minus, plus = (_layers(detector, v) for v in volumes)
    for layers, sign in ((minus, -1), (plus, 1)):
        assert not detector.layer_is_barrel[layers].any()
        np.testing.assert_allclose(np.sort(np.abs(detector.layer_z[layers])), abs_z, atol=1.5)
        assert np.all(np.sign(detector.layer_z[layers]) == sign)
        assert (detector.layer_n_modules[layers] == modules).all()
        mods = np.isin(detector.module_layer, layers)
        assert (detector.is_pixel[mods] == pixel).all()


def test_strip_endcaps_are_trapezoids(detector: Detector) -> None:
    mods = np.isin(detector.volume_id, [12, 14, 16, 18])
    assert (detector.max_hu[mods] > detector.min_hu[mods]).all()
    pixel = np.isin(detector.volume_id, [7, 8, 9])
    assert detector.is_pixel[pixel].all() and not detector.is_pixel[~pixel].any()


def test_local_global_round_trip_and_trapezoid(detector: Detector) -> None:
    rng = np.random.default_rng(0)
    module = rng.integers(0, detector.n_modules, 500)
    local = rng.normal(size=(500, 3)) * 10
    back = detector.to_local(module, detector.to_global(module, local))
    np.testing.assert_allclose(back, local, atol=1e-9)
    trap = np.flatnonzero(np.isin(detector.volume_id, [12]))[:1]
    hv, lo, hi = detector.hv[trap], detector.min_hu[trap], detector.max_hu[trap]
    # Wide edge at v = +hv, narrow edge at v = -hv.
    assert detector.inside(trap, 0.99 * hi, 0.99 * hv)[0]
    assert not detector.inside(trap, 0.99 * hi, -0.99 * hv)[0]
    assert detector.inside(trap, 0.99 * lo, -0.99 * hv)[0]
    assert not detector.inside(trap, 0.0, 1.01 * hv)[0]


def test_find_modules(detector: Detector) -> None:
    idx = np.array([0, 5000, 18727])
    found = detector.find_modules(
        detector.volume_id[idx], detector.layer_id[idx], detector.module_id[idx]
    )
    assert found.tolist() == idx.tolist()
    assert detector.find_modules(np.array([8]), np.array([3]), np.array([1])).tolist() == [-1]


def test_lookup_finds_the_module_of_every_point(detector: Detector) -> None:
    """A point on a module, moved off its plane across the layer, looks up that module."""
    rng = np.random.default_rng(1)
    module = rng.integers(0, detector.n_modules, 20000)
    v = rng.uniform(-1, 1, len(module)) * detector.hv[module]
    u = rng.uniform(-1, 1, len(module)) * detector.half_width_u(module, v)
    points = detector.to_global(module, np.stack([u, v, np.zeros(len(module))], axis=1))
    layer = detector.module_layer[module]
    candidates = detector.candidate_modules(layer, points)
    assert (candidates == module[:, None]).any(axis=1).all()
    # Every candidate belongs to the queried layer.
    valid = candidates >= 0
    assert (detector.module_layer[candidates[valid]] == np.repeat(layer, valid.sum(1))).all()
    # Candidate lists stay short (the lookup is what makes propagation fast).
    assert valid.sum(axis=1).mean() < 8


def _synthetic_detector() -> pd.DataFrame:
    """A 12-module barrel ring at r = 100 mm (w radial) and a 6-module disk at z = 500 (w = z)."""
    rows = []
    for i in range(12):
        phi = 2 * np.pi * i / 12
        u = np.array([-np.sin(phi), np.cos(phi), 0.0])
        v = np.array([0.0, 0.0, 1.0])
        w = np.cross(u, v)
        rows.append((1, 2, i + 1, 100 * np.cos(phi), 100 * np.sin(phi), 0.0, u, v, w))
    for i in range(6):
        phi = 2 * np.pi * i / 6
        v = np.array([np.cos(phi), np.sin(phi), 0.0])
        w = np.array([0.0, 0.0, 1.0])
        u = np.cross(v, w)
        rows.append((2, 4, i + 1, 80 * np.cos(phi), 80 * np.sin(phi), 500.0, u, v, w))
    records = []
    for vol, lay, mod, cx, cy, cz, u, v, w in rows:
        rot = np.stack([u, v, w], axis=1)
        records.append(
            {
                "volume_id": vol,
                "layer_id": lay,
                "module_id": mod,
                "cx": cx,
                "cy": cy,
                "cz": cz,
                **{
                    f"rot_{a}{b}": rot[i, j]
                    for i, a in enumerate("xyz")
                    for j, b in enumerate("uvw")
                },
                "module_t": 0.2,
                "module_minhu": 20.0,
                "module_maxhu": 25.0 if vol == 2 else 20.0,
                "module_hv": 30.0,
                "pitch_u": 0.05,
                "pitch_v": 0.05 if vol == 1 else 1.0,
            }
        )
    return pd.DataFrame.from_records(records)


def test_layers_are_derived_not_hard_coded(tmp_path) -> None:
    frame = _synthetic_detector()
    path = tmp_path / "detectors.csv"
    frame.to_csv(path)  # with a leading unnamed index column, as in some public copies
    det = Detector.from_frame(read_detectors(path), source=str(path))
    assert det.n_layers == 2 and det.n_modules == 18
    assert det.layer_is_barrel.tolist() == [True, False]
    assert det.layer_radius[0] == pytest.approx(100.0)
    assert det.layer_z[1] == pytest.approx(500.0)
    assert det.layer_zmax[0] == pytest.approx(30.0)
    assert det.is_pixel.tolist() == [True] * 12 + [False] * 6


def test_bad_rotation_is_rejected(tmp_path) -> None:
    frame = _synthetic_detector()
    frame.loc[3, "rot_xu"] = 2.0
    with pytest.raises(InputError, match=r"row 3: rotation is not orthonormal"):
        Detector.from_frame(frame, source="bad.csv")


def test_non_positive_pitch_is_rejected() -> None:
    frame = _synthetic_detector()
    frame.loc[5, "pitch_u"] = 0.0
    with pytest.raises(InputError, match=r"bad.csv: column pitch_u row 5 must be positive"):
        Detector.from_frame(frame, source="bad.csv")
