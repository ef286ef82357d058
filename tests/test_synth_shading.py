"""The synthetic-data generator's fused per-pixel kernel (tools/synth_faces.py) against the NumPy
formulation it replaced: same random stream, same image; and its 2D noise against the generic crop."""
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))

import synth_faces as sf  # noqa: E402

from lmfit3d.camera import Camera  # noqa: E402
from lmfit3d.imaging import ROI, crop  # noqa: E402
from lmfit3d.render import render, vertex_normals  # noqa: E402
from lmfit3d.skinning import evaluate_mesh  # noqa: E402


@pytest.fixture(scope="module")
def synth(model):
    return sf.FaceSynth(model, image_px=128, crop_px=64)


def _albedo_reference(s, rng, vids, bary, seed):
    """Per-pixel albedo (N, 3) and specular strength (N,), NumPy arrays over the drawn pixels."""
    T = s.T
    p = np.einsum("nk,nkd->nd", bary, T[vids])
    near = vids[np.arange(len(vids)), bary.argmax(1)]

    def lerp(a):
        return np.einsum("nk,nk->n", bary, a[vids])

    t = rng.random() ** 1.3
    skin = np.clip((sf.SKIN_LIGHT * (1 - t) + sf.SKIN_DARK * t) * rng.uniform(0.9, 1.1, 3), 0.02, 1)
    col = np.tile(skin, (len(p), 1))
    col *= (1 + rng.uniform(0.05, 0.25) * (sf.noise3(p, 25.0, seed, octaves=3) - 0.5))[:, None]
    red = lerp(s.cheek) * rng.uniform(0, 0.5) + lerp(s.nose_tip) * rng.uniform(0, 0.4)
    col *= (1 - red[:, None] * np.array([0.0, 0.35, 0.3]))
    col *= (1 + rng.uniform(0.02, 0.12) * (sf.noise3(p, 0.9, seed + 1) - 0.5))[:, None]
    spec = np.full(len(p), rng.uniform(0.02, 0.3))
    lipw = np.clip(lerp(s.lips.astype(float)) * 1.2, 0, 1) * (~s.lips_inner[near] | s.lips[near])
    lipcol = skin * rng.uniform(0.55, 0.9) * np.array([1.0, rng.uniform(0.55, 0.8), rng.uniform(0.6, 0.85)])
    if rng.random() < 0.15:
        lipcol = rng.random(3) * 0.7
    col = col * (1 - lipw[:, None]) + lipcol * lipw[:, None]
    hair = sf.HAIR[rng.integers(len(sf.HAIR))] * rng.uniform(0.8, 1.2)
    strands = sf.noise3(p, np.array([0.5, 4.0, 4.0]) * rng.uniform(0.7, 1.4), seed + 2, octaves=2)
    brow = np.clip((rng.uniform(2.5, 5.5) - s.brow_dist[near]) / 1.5, 0, 1) * np.clip(0.6 + strands, 0, 1)
    browcol = hair * 0.8 if rng.random() < 0.8 else skin * 0.35
    col = col * (1 - brow[:, None] * rng.uniform(0.6, 1.0)) + browcol * brow[:, None] * 0.9
    col *= (1 - 0.7 * np.clip((rng.uniform(0.8, 2.0) - s.lid_dist[near]) / 0.8, 0, 1))[:, None]
    if rng.random() < 0.25:
        st = (sf.noise3(p, 0.6, seed + 3) > rng.uniform(0.35, 0.7)) * s.beard[near]
        col = np.where(st[:, None], col * 0.5 + hair * 0.5 * rng.uniform(0.3, 1.0), col)
    if rng.random() < 0.85:
        h0 = rng.uniform(s.brow_top + 20, s.brow_top + 55)
        scalp = np.where(p[:, 2] > 30, p[:, 1] > h0 - 45 * (np.abs(p[:, 0]) / 85) ** 2,
                         p[:, 1] > np.where(p[:, 2] > -20, 55, rng.uniform(-90, -20)))
        scalp &= s.skin[near]
        hs = sf.noise3(p, np.array([1.0, 12.0, 1.0]) * rng.uniform(0.5, 2), seed + 4, octaves=3)
        col = np.where(scalp[:, None], hair * (0.55 + 0.9 * hs)[:, None], col)
        spec = np.where(scalp, 0.1, spec)
    cosang = lerp(s.eye_cos)
    iris_c, pupil_c = np.cos(np.radians(rng.uniform(24, 30))), np.cos(np.radians(rng.uniform(9, 14)))
    iris = sf.IRIS[rng.integers(len(sf.IRIS))] * rng.uniform(0.7, 1.3)
    icol = np.where((cosang > iris_c)[:, None], iris * (0.7 + 0.6 * sf.noise3(p, 0.7, seed + 5))[:, None],
                    np.array([0.88, 0.85, 0.8]) * rng.uniform(0.7, 1.0))
    icol = np.where((cosang > pupil_c)[:, None], 0.02, icol)
    col = np.where(s.eyeball[near][:, None], icol, col)
    spec = np.where(s.eyeball[near], 0.6, spec)
    col = np.where(s.teeth[near][:, None], np.array([0.9, 0.87, 0.78]) * rng.uniform(0.6, 1.0), col)
    col = np.where(s.mouth[near][:, None], np.array([0.4, 0.12, 0.12]) * rng.uniform(0.3, 0.8), col)
    return np.clip(col, 0, 1), spec


def _shade_reference(s, rng, img, verts, tri, bary, seed):
    """Albedo x (ambient + Lambert) + Blinn-Phong, then the image gain, as NumPy expressions."""
    mask = tri >= 0
    vids = s.faces[tri[mask]]
    b = bary[mask].astype(np.float64)
    alb, ks = _albedo_reference(s, rng, vids, b, seed)
    nv = np.empty_like(verts)
    vertex_normals(verts, s.faces, nv)
    n = np.einsum("nk,nkd->nd", b, nv[vids])
    n /= np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-9)
    pos = np.einsum("nk,nkd->nd", b, verts[vids])
    view = -pos / np.linalg.norm(pos, axis=1, keepdims=True)
    shade = np.tile(rng.uniform(0.15, 0.55) * (1 + rng.uniform(-0.15, 0.15, 3)), (len(n), 1))
    specular = np.zeros(len(n))
    shin = rng.uniform(8, 60)
    for k in range(rng.integers(1, 3)):
        ld = np.array([rng.uniform(-1, 1), rng.uniform(-0.5, 1), rng.uniform(0.1, 1.2)])
        ld /= np.linalg.norm(ld)
        li = rng.uniform(0.4, 1.0) * (1.0 if k == 0 else 0.5) * (1 + rng.uniform(-0.2, 0.2, 3))
        ndl = np.clip(n @ ld, 0, None)
        shade += ndl[:, None] * li
        hv = view + ld
        hv /= np.maximum(np.linalg.norm(hv, axis=1, keepdims=True), 1e-9)
        specular += ks * np.clip(np.einsum("nd,nd->n", n, hv), 0, None) ** shin * (ndl > 0) * li.mean()
    img = img.copy()
    img[mask] = alb * shade + specular[:, None]
    return np.clip(img * rng.uniform(0.8, 1.2), 0, 1)


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4, 5])
def test_shade_pixels_matches_the_numpy_formulation(synth, seed):
    rng = np.random.default_rng(seed)
    H = synth.image_px
    p = synth.random_params(rng)
    cam = Camera.from_fov(H, H, 30.0)
    yaw = rng.uniform(-1.0, 1.0)                     # also profiles: back of the head and scalp in view
    p = p.replace(translation=np.array([0.0, 0.0, -cam.focal * sf.FACE_WIDTH_MM / 90.0]),
                  rotations=np.vstack([[0.0, yaw, 0.0], p.rotations[1:]]))
    verts = evaluate_mesh(synth.model, p)
    tri, bary = synth.rasterize(verts, cam)
    # the rasteriser call equals render()'s buffers
    _, tri_r, bary_r = render(verts, synth.faces, np.zeros(3), cam.focal, H, H)
    np.testing.assert_array_equal(tri, tri_r)
    np.testing.assert_array_equal(bary, bary_r)
    bg = rng.random((H, H, 3)) * 1.4 - 0.2          # out-of-range background: the gain/clip applies to it
    mark = rng.integers(1 << 20)
    r_ref = np.random.default_rng([seed, 99])
    r_new = np.random.default_rng([seed, 99])
    ref = _shade_reference(synth, r_ref, bg, verts, tri, bary, int(mark))
    img = bg.copy()
    cols, app = synth.appearance(r_new)
    nv = np.empty_like(verts)
    vertex_normals(verts, synth.faces, nv)
    amb, ld, li, shin, gain = synth.lighting(r_new)
    sf.shade_pixels(img, tri, bary, synth.faces, synth.T, verts, nv, synth.vattr, synth.vflags, cols, app,
                    int(mark), amb, ld, li, shin, gain)
    assert r_new.random() == r_ref.random(), "the random stream is consumed identically"
    assert (tri >= 0).sum() > 500
    np.testing.assert_allclose(img, ref, rtol=0, atol=1e-12)


def test_point_noise_equals_the_array_noise(rng):
    p = rng.uniform(-100, 100, (500, 3))
    for cell, octaves in ((25.0, 3), (np.array([0.5, 4.0, 4.0]), 2), (0.9, 1)):
        ref = sf.noise3(p, cell, 11, octaves)
        c = np.broadcast_to(np.asarray(cell, float), (3,))
        got = np.array([sf._fbm_at(x, y, z, c[0], c[1], c[2], 11, octaves) for x, y, z in p])
        np.testing.assert_array_equal(got, ref)


def test_noise2_equals_the_first_channel_of_the_generic_crop():
    for h, w, cell, octaves in ((64, 64, 4.0, 3), (40, 56, 17.0, 4), (32, 32, 1.5, 2)):
        r1, r2 = np.random.default_rng(5), np.random.default_rng(5)
        got = sf.noise2(r1, h, w, cell, octaves)
        ref, amp, tot = np.zeros((h, w)), 1.0, 0.0
        for o in range(octaves):
            c = max(cell / 2 ** o, 1.0)
            g = int(np.ceil(max(h, w) / c)) + 1
            grid = r2.integers(0, 256, size=(g, g, 3), dtype=np.uint8)
            ref += amp * crop(grid, ROI(g / 2.0, g / 2.0, g - 1.0), max(h, w))[0, :h, :w]
            tot += amp
            amp *= 0.5
        np.testing.assert_allclose(got, ref / tot, rtol=0, atol=1e-6)
        assert r1.random() == r2.random()
