"""Synthetic training data for the dense landmark network (paper sec. 3.1.1), numpy/numba only.

Each sample is a random ICT face (identity from the prior, sparse random expression, head/neck/eye
pose, camera) rendered by ``lmfit3d.render`` and then shaded per pixel here:

* appearance: skin tone from a light-to-dark range with low-frequency blotches, redness and pores
  (3D value noise in template space, so texture sticks to the skin), lips, brows, a dark upper
  eyelid line (the lashes are not drawn), scalp hair with a random hairline and colour, stubble,
  iris colour, teeth and a darkened mouth interior;
* lighting: ambient + key + fill directional lights with random colours, Blinn-Phong specular;
* background: procedural textures (multi-octave noise, stripes, gradients, boxes) or photos shipped
  with scikit-image (``skimage.data``, no download; cached to a small bank file);
* occluders: random ellipses/polygons/bars, skin-coloured (hand-like) or textured;
* augmentation of the crop: blur, noise, JPEG, colour jitter, grey.

Labels: image positions of every ``dense703`` landmark (projections of their vertices, also when
occluded or outside the image), a visibility flag (depth test + occluders), and crops for both ROI
strategies (``aligned``: rotated so the eyes are level; ``axis``: no rotation), each with its ROI
and the labels in crop pixels.  The ROI is the ibug68 subset's box (eye corners 36, 45 give the
rotation) times ``roi_scale``, jittered in position, scale and rotation as a tracker's ROI would be.

Command line::

    python tools/synth_faces.py shards OUT_DIR --n 100000 --workers 2      # training shards
    python tools/synth_faces.py mosaic docs/synth_mosaic.png                 # picture of samples
    python tools/synth_faces.py bench --n 50                                 # images per second
"""
import argparse
import io
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
from numba import njit

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lmfit3d.camera import Camera  # noqa: E402
from lmfit3d.imaging import ROI, crop, warp_chw  # noqa: E402
from lmfit3d.landmarks import load_landmark_set  # noqa: E402
from lmfit3d.model import Params, load_model  # noqa: E402
from lmfit3d.predict import roi_from_points  # noqa: E402
from lmfit3d.camera import project_points  # noqa: E402
from lmfit3d.render import rasterize, vertex_normals, visible_faces  # noqa: E402
from lmfit3d.skinning import evaluate_mesh  # noqa: E402

ROI_SCALE = 1.6                # ROI side / longest side of the ibug68 box (aligned frame)
EYE_POINTS = (36, 45)          # ibug68 outer eye corners: subject's right, left
FACE_WIDTH_MM = 150.0


# ----------------------------------------------------------------------------------------------
# procedural noise
# ----------------------------------------------------------------------------------------------

@njit(cache=True)
def _lattice(i, j, k, seed):
    h = (i * 73856093) ^ (j * 19349663) ^ (k * 83492791) ^ (seed * 2654435761)
    h = (h ^ (h >> 13)) * 1274126177
    h = h ^ (h >> 16)
    return (h & 0xFFFFFF) / 16777215.0


@njit(cache=True, inline="always")
def _value_noise_at(x, y, z, seed):
    """Value noise at one lattice-space point (the body of :func:`value_noise3`)."""
    i0, j0, k0 = int(np.floor(x)), int(np.floor(y)), int(np.floor(z))
    fx, fy, fz = x - i0, y - j0, z - k0
    sx, sy, sz = fx * fx * (3 - 2 * fx), fy * fy * (3 - 2 * fy), fz * fz * (3 - 2 * fz)
    acc = 0.0
    for di in range(2):
        wx = sx if di else 1 - sx
        for dj in range(2):
            wy = sy if dj else 1 - sy
            for dk in range(2):
                wz = sz if dk else 1 - sz
                acc += wx * wy * wz * _lattice(i0 + di, j0 + dj, k0 + dk, seed)
    return acc


@njit(cache=True, inline="always")
def _fbm_at(px, py, pz, c0, c1, c2, seed, octaves):
    """:func:`noise3` at one point (p_x, p_y, p_z) with cell (c0, c1, c2): the same octave sum."""
    acc, amp, tot = 0.0, 1.0, 0.0
    for o in range(octaves):
        f = 2.0 ** o
        acc += amp * _value_noise_at(px / (c0 / f), py / (c1 / f), pz / (c2 / f), seed + 17 * o)
        tot += amp
        amp *= 0.5
    return acc / tot


@njit(cache=True)
def value_noise3(p, scale, seed, out):
    """Smooth value noise in [0, 1] at points p (N, 3) (units of p / ``scale`` (3,) per lattice cell)."""
    for n in range(p.shape[0]):
        out[n] = _value_noise_at(p[n, 0] / scale[0], p[n, 1] / scale[1], p[n, 2] / scale[2], seed)


def noise3(p, cell, seed, octaves=1):
    """Multi-octave value noise (N,) in about [0, 1] at points (N, 3); ``cell`` scalar or (3,) mm."""
    p = np.ascontiguousarray(p, dtype=np.float64)
    cell = np.broadcast_to(np.asarray(cell, dtype=np.float64), (3,)).copy()
    out = np.zeros(p.shape[0])
    tmp = np.empty(p.shape[0])
    amp, tot = 1.0, 0.0
    for o in range(octaves):
        value_noise3(p, cell / 2 ** o, int(seed) + 17 * o, tmp)
        out += amp * tmp
        tot += amp
        amp *= 0.5
    return out / tot


def noise2(rng, h, w, cell, octaves=3):
    """Multi-octave 2D value noise image (h, w) in about [0, 1] (bilinear upsampling of random grids)."""
    out = np.zeros((h, w))
    up = np.empty((1, max(h, w), max(h, w)), np.float32)             # channel 0 of the crop only
    amp, tot = 1.0, 0.0
    for o in range(octaves):
        c = max(cell / 2 ** o, 1.0)
        g = int(np.ceil(max(h, w) / c)) + 1
        grid = rng.integers(0, 256, size=(g, g, 3), dtype=np.uint8)     # 3 channels: the same random stream
        warp_chw(grid, ROI(g / 2.0, g / 2.0, g - 1.0).matrix(max(h, w)), max(h, w), False, np.float32(1.0 / 255.0),
                 np.float32(0.0), up)
        out += amp * up[0, :h, :w]
        tot += amp
        amp *= 0.5
    return out / tot


# ----------------------------------------------------------------------------------------------
# backgrounds
# ----------------------------------------------------------------------------------------------

SKIMAGE_PHOTOS = ("brick", "camera", "chelsea", "coffee", "coins", "grass", "gravel", "horse", "moon",
                  "page", "text", "rocket", "motorcycle_left", "hubble_deep_field", "immunohistochemistry",
                  "colorwheel", "logo", "clock", "cat", "checkerboard", "eagle", "lily", "retina")


def photo_bank(path=None, side=320):
    """Photos shipped with scikit-image (no face images), as (n, side, side, 3) uint8.

    Read from ``path`` (an .npz) when it exists, else built from ``skimage.data`` (only images
    that ship inside the package; nothing is downloaded) and saved there.  Empty when neither works.
    """
    if path is not None and Path(path).is_file():
        return np.load(path)["photos"]
    imgs = []
    try:
        import skimage.data as skd
        from skimage.transform import resize
        for name in SKIMAGE_PHOTOS:
            try:
                im = np.asarray(getattr(skd, name)())
            except Exception:            # noqa: BLE001  (needs a download, or missing in this version)
                continue
            if im.dtype == bool:
                im = im.astype(np.uint8) * 255
            if im.ndim == 2:
                im = np.repeat(im[..., None], 3, 2)
            im = im[..., :3]
            if im.dtype != np.uint8:
                im = (im.astype(np.float64) / max(float(im.max()), 1e-9) * 255).astype(np.uint8)
            s = min(im.shape[:2])
            im = im[:s, :s]
            imgs.append((resize(im, (side, side), anti_aliasing=True, preserve_range=True)).astype(np.uint8))
    except ImportError:
        pass
    photos = np.stack(imgs) if imgs else np.zeros((0, side, side, 3), np.uint8)
    if path is not None and photos.shape[0]:
        np.savez_compressed(path, photos=photos)
    return photos


def procedural_background(rng, h, w):
    """A random textured background (h, w, 3) float in [0, 1]."""
    kind = rng.integers(0, 5)
    c0, c1 = rng.random(3), rng.random(3)
    if kind == 0:                                   # cloudy noise between two colours
        t = noise2(rng, h, w, rng.uniform(8, 80), octaves=4)[..., None]
    elif kind == 1:                                 # stripes
        ang = rng.uniform(0, np.pi)
        yy, xx = np.mgrid[0:h, 0:w]
        t = 0.5 + 0.5 * np.sin((xx * np.cos(ang) + yy * np.sin(ang)) * 2 * np.pi / rng.uniform(4, 60))
        t = t[..., None]
    elif kind == 2:                                 # gradient
        yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
        ang = rng.uniform(0, 2 * np.pi)
        t = np.clip(0.5 + (xx - 0.5) * np.cos(ang) + (yy - 0.5) * np.sin(ang), 0, 1)[..., None]
    elif kind == 3:                                 # boxes (indoor-like)
        img = np.tile(c0, (h, w, 1))
        for _ in range(rng.integers(3, 12)):
            x0, y0 = rng.integers(0, w), rng.integers(0, h)
            img[y0:y0 + rng.integers(10, h), x0:x0 + rng.integers(10, w)] = rng.random(3)
        return img * (0.8 + 0.2 * noise2(rng, h, w, 30)[..., None])
    else:                                           # flat
        t = np.full((h, w, 1), 0.0)
    grain = rng.normal(0, 0.02, (h, w, 1))
    out = np.empty((h, w, 3))
    _blend_grain(np.ascontiguousarray(t[..., 0]), c0, c1, grain[..., 0], noise2(rng, h, w, 4), out)
    return out


@njit(cache=True)
def _blend_grain(t, c0, c1, grain, n2, out):
    """out = clip(c0 (1 - t) + c1 t + grain n2, 0, 1) per pixel (t, grain, n2 (h, w); c0, c1 (3,))."""
    for y in range(t.shape[0]):
        for x in range(t.shape[1]):
            g = grain[y, x] * n2[y, x]
            for k in range(3):
                out[y, x, k] = min(max(c0[k] * (1 - t[y, x]) + c1[k] * t[y, x] + g, 0.0), 1.0)


def background(rng, photos, h, w):
    if photos.shape[0] and rng.random() < 0.5:
        ph = photos[rng.integers(photos.shape[0])]
        s = rng.uniform(0.3, 1.0) * ph.shape[0]
        c = rng.uniform(s / 2, ph.shape[0] - s / 2, 2)
        sub = crop(ph, ROI(c[0], c[1], s, rng.normal(0, 0.2)), max(h, w), mirror=bool(rng.random() < 0.5))
        sub = np.transpose(sub, (1, 2, 0))[:h, :w].astype(np.float64)
        return np.clip(sub * rng.uniform(0.6, 1.3) + rng.uniform(-0.1, 0.1, 3), 0, 1)
    return procedural_background(rng, h, w)


# ----------------------------------------------------------------------------------------------
# the face synthesiser
# ----------------------------------------------------------------------------------------------

SKIN_LIGHT = np.array([0.93, 0.76, 0.66])
SKIN_DARK = np.array([0.28, 0.17, 0.11])
HAIR = np.array([[0.04, 0.03, 0.03], [0.15, 0.09, 0.05], [0.32, 0.2, 0.11], [0.7, 0.55, 0.33],
                 [0.5, 0.22, 0.1], [0.6, 0.6, 0.6], [0.85, 0.85, 0.82]])
IRIS = np.array([[0.25, 0.13, 0.05], [0.1, 0.05, 0.02], [0.3, 0.45, 0.6], [0.3, 0.4, 0.25],
                 [0.45, 0.45, 0.45], [0.4, 0.3, 0.15]])


def _point_in_polygon(pts, poly):
    """Even-odd test of pts (N, 2) against a closed polygon (M, 2)."""
    x, y = pts[:, 0], pts[:, 1]
    inside = np.zeros(len(pts), bool)
    for a, b in zip(poly, np.roll(poly, -1, 0)):
        cond = (a[1] > y) != (b[1] > y)
        xin = (b[0] - a[0]) * (y - a[1]) / (b[1] - a[1] + 1e-12) + a[0]
        inside ^= cond & (x < xin)
    return inside


def _dist_to_polyline(pts, line):
    """Distance of pts (N, 2) to a polyline (M, 2)."""
    d = np.full(len(pts), np.inf)
    for a, b in zip(line[:-1], line[1:]):
        ab = b - a
        t = np.clip(((pts - a) @ ab) / (ab @ ab), 0, 1)
        d = np.minimum(d, np.linalg.norm(pts - (a + t[:, None] * ab), axis=1))
    return d


# ----------------------------------------------------------------------------------------------
# per-pixel appearance and shading (one numba pass; the parameters come from FaceSynth.appearance)
# ----------------------------------------------------------------------------------------------

# rows of the colour table
C_SKIN, C_LIP, C_HAIR, C_BROW, C_STUBBLE, C_IRIS, C_WHITE, C_TEETH, C_MOUTH = range(9)
# scalar parameters
(A_BLOT, A_RED_CHEEK, A_RED_NOSE, A_PORES, A_SPEC, A_STRAND, _, _, A_BROW_W, A_BROW_BLEND, A_LID_W, A_STUBBLE,
 A_STUBBLE_THR, A_SCALP, A_HAIRLINE, A_BACK_LINE, A_HAIR_CELL, _, _, A_IRIS_COS, A_PUPIL_COS, A_N) = range(22)
# per-vertex attribute columns and region flags
V_CHEEK, V_NOSE, V_LIPS, V_EYE_COS, V_BROW_DIST, V_LID_DIST = range(6)
F_LIPS, F_LIPS_INNER, F_SKIN, F_BEARD, F_EYE, F_TEETH, F_MOUTH = 1, 2, 4, 8, 16, 32, 64


@njit(cache=True)
def shade_pixels(img, tri, bary, faces, T, verts, nv, vattr, vflags, cols, a, seed, amb, ld, li, shin, gain):
    """Shade the drawn pixels of ``img`` (H, W, 3) float64 in place, then scale all by ``gain`` and clip.

    tri (H, W) int64 and bary (H, W, 3) float32 from the rasteriser; faces (T, 3) int64; T (V, 3)
    neutral template (mm, texture space of the 3D noise); verts, nv (V, 3) posed camera-space
    vertices and unit normals; vattr (V, 6) float64 (``V_*``) and vflags (V,) uint8 (``F_*``) per
    vertex; cols (9, 3) and a (A_N,) from ``FaceSynth.appearance``; amb (3,), ld, li (L, 3) unit
    light directions and colours; shin Blinn-Phong exponent.  Region lookups use the pixel's nearest
    vertex (largest barycentric); noise is evaluated only where it shows.
    """
    h, w = img.shape[0], img.shape[1]
    nl = ld.shape[0]
    for y in range(h):
        for x in range(w):
            t = tri[y, x]
            if t >= 0:
                i0, i1, i2 = faces[t, 0], faces[t, 1], faces[t, 2]
                w0, w1, w2 = np.float64(bary[y, x, 0]), np.float64(bary[y, x, 1]), np.float64(bary[y, x, 2])
                if w0 >= w1 and w0 >= w2:
                    near = i0
                elif w1 >= w2:
                    near = i1
                else:
                    near = i2
                fl = vflags[near]
                px = w0 * T[i0, 0] + w1 * T[i1, 0] + w2 * T[i2, 0]
                py = w0 * T[i0, 1] + w1 * T[i1, 1] + w2 * T[i2, 1]
                pz = w0 * T[i0, 2] + w1 * T[i1, 2] + w2 * T[i2, 2]
                scalp = False
                if a[A_SCALP] != 0.0 and fl & F_SKIN:
                    if pz > 30:
                        scalp = py > a[A_HAIRLINE] - 45 * (abs(px) / 85) ** 2
                    else:
                        scalp = py > (55.0 if pz > -20 else a[A_BACK_LINE])
                ks = 0.6 if fl & F_EYE else (0.1 if scalp else a[A_SPEC])
                c0, c1, c2 = cols[C_SKIN, 0], cols[C_SKIN, 1], cols[C_SKIN, 2]
                if fl & F_MOUTH:
                    c0, c1, c2 = cols[C_MOUTH, 0], cols[C_MOUTH, 1], cols[C_MOUTH, 2]
                elif fl & F_TEETH:
                    c0, c1, c2 = cols[C_TEETH, 0], cols[C_TEETH, 1], cols[C_TEETH, 2]
                elif fl & F_EYE:
                    cosang = w0 * vattr[i0, V_EYE_COS] + w1 * vattr[i1, V_EYE_COS] + w2 * vattr[i2, V_EYE_COS]
                    if cosang > a[A_PUPIL_COS]:
                        c0 = c1 = c2 = 0.02
                    elif cosang > a[A_IRIS_COS]:
                        f = 0.7 + 0.6 * _fbm_at(px, py, pz, 0.7, 0.7, 0.7, seed + 5, 1)
                        c0, c1, c2 = cols[C_IRIS, 0] * f, cols[C_IRIS, 1] * f, cols[C_IRIS, 2] * f
                    else:
                        c0, c1, c2 = cols[C_WHITE, 0], cols[C_WHITE, 1], cols[C_WHITE, 2]
                elif scalp:
                    f = 0.55 + 0.9 * _fbm_at(px, py, pz, a[A_HAIR_CELL], a[A_HAIR_CELL + 1], a[A_HAIR_CELL + 2],
                                             seed + 4, 3)
                    c0, c1, c2 = cols[C_HAIR, 0] * f, cols[C_HAIR, 1] * f, cols[C_HAIR, 2] * f
                else:
                    # skin: blotches, redness, pores, lips, brows, eyelid line, stubble
                    f = 1 + a[A_BLOT] * (_fbm_at(px, py, pz, 25.0, 25.0, 25.0, seed, 3) - 0.5)
                    c0, c1, c2 = c0 * f, c1 * f, c2 * f
                    red = ((w0 * vattr[i0, V_CHEEK] + w1 * vattr[i1, V_CHEEK] + w2 * vattr[i2, V_CHEEK]) * a[A_RED_CHEEK]
                           + (w0 * vattr[i0, V_NOSE] + w1 * vattr[i1, V_NOSE] + w2 * vattr[i2, V_NOSE]) * a[A_RED_NOSE])
                    c1 *= 1 - red * 0.35
                    c2 *= 1 - red * 0.3
                    f = 1 + a[A_PORES] * (_fbm_at(px, py, pz, 0.9, 0.9, 0.9, seed + 1, 1) - 0.5)
                    c0, c1, c2 = c0 * f, c1 * f, c2 * f
                    lipw = min(max((w0 * vattr[i0, V_LIPS] + w1 * vattr[i1, V_LIPS] + w2 * vattr[i2, V_LIPS]) * 1.2,
                                   0.0), 1.0)
                    if lipw > 0 and (not fl & F_LIPS_INNER or fl & F_LIPS):
                        c0 = c0 * (1 - lipw) + cols[C_LIP, 0] * lipw
                        c1 = c1 * (1 - lipw) + cols[C_LIP, 1] * lipw
                        c2 = c2 * (1 - lipw) + cols[C_LIP, 2] * lipw
                    bf = min(max((a[A_BROW_W] - vattr[near, V_BROW_DIST]) / 1.5, 0.0), 1.0)
                    if bf > 0:
                        strands = _fbm_at(px, py, pz, a[A_STRAND], a[A_STRAND + 1], a[A_STRAND + 2], seed + 2, 2)
                        brow = bf * min(max(0.6 + strands, 0.0), 1.0)
                        g = 1 - brow * a[A_BROW_BLEND]
                        c0 = c0 * g + cols[C_BROW, 0] * brow * 0.9
                        c1 = c1 * g + cols[C_BROW, 1] * brow * 0.9
                        c2 = c2 * g + cols[C_BROW, 2] * brow * 0.9
                    lid = min(max((a[A_LID_W] - vattr[near, V_LID_DIST]) / 0.8, 0.0), 1.0)
                    if lid > 0:
                        g = 1 - 0.7 * lid
                        c0, c1, c2 = c0 * g, c1 * g, c2 * g
                    if a[A_STUBBLE] != 0.0 and fl & F_BEARD:
                        if _fbm_at(px, py, pz, 0.6, 0.6, 0.6, seed + 3, 1) > a[A_STUBBLE_THR]:
                            c0 = c0 * 0.5 + cols[C_STUBBLE, 0]
                            c1 = c1 * 0.5 + cols[C_STUBBLE, 1]
                            c2 = c2 * 0.5 + cols[C_STUBBLE, 2]
                c0, c1, c2 = min(max(c0, 0.0), 1.0), min(max(c1, 0.0), 1.0), min(max(c2, 0.0), 1.0)
                # Lambert (ambient + directional) and Blinn-Phong specular, interpolated normal
                n0 = w0 * nv[i0, 0] + w1 * nv[i1, 0] + w2 * nv[i2, 0]
                n1 = w0 * nv[i0, 1] + w1 * nv[i1, 1] + w2 * nv[i2, 1]
                n2 = w0 * nv[i0, 2] + w1 * nv[i1, 2] + w2 * nv[i2, 2]
                nn = max(np.sqrt(n0 * n0 + n1 * n1 + n2 * n2), 1e-9)
                n0, n1, n2 = n0 / nn, n1 / nn, n2 / nn
                q0 = w0 * verts[i0, 0] + w1 * verts[i1, 0] + w2 * verts[i2, 0]
                q1 = w0 * verts[i0, 1] + w1 * verts[i1, 1] + w2 * verts[i2, 1]
                q2 = w0 * verts[i0, 2] + w1 * verts[i1, 2] + w2 * verts[i2, 2]
                qn = np.sqrt(q0 * q0 + q1 * q1 + q2 * q2)
                v0, v1, v2 = -q0 / qn, -q1 / qn, -q2 / qn
                s0, s1, s2 = amb[0], amb[1], amb[2]
                spec = 0.0
                for k in range(nl):
                    l0, l1, l2 = ld[k, 0], ld[k, 1], ld[k, 2]
                    ndl = max(n0 * l0 + n1 * l1 + n2 * l2, 0.0)
                    s0 += ndl * li[k, 0]
                    s1 += ndl * li[k, 1]
                    s2 += ndl * li[k, 2]
                    if ndl > 0:
                        h0, h1, h2 = v0 + l0, v1 + l1, v2 + l2
                        hn = max(np.sqrt(h0 * h0 + h1 * h1 + h2 * h2), 1e-9)
                        h0, h1, h2 = h0 / hn, h1 / hn, h2 / hn
                        ndh = max(n0 * h0 + n1 * h1 + n2 * h2, 0.0)
                        spec += ks * ndh ** shin * ((li[k, 0] + li[k, 1] + li[k, 2]) / 3.0)
                img[y, x, 0] = c0 * s0 + spec
                img[y, x, 1] = c1 * s1 + spec
                img[y, x, 2] = c2 * s2 + spec
            for k in range(3):
                img[y, x, k] = min(max(img[y, x, k] * gain, 0.0), 1.0)


class FaceSynth:
    """Random rendered faces with dense landmark labels and ROI crops.

    Parameters
    ----------
    model : FaceModel
    image_px : int, side of the rendered square image.
    crop_px : int, side of both ROI crops (the network input).
    photos : (n, s, s, 3) uint8 background photos (may be empty).
    """

    def __init__(self, model, image_px=288, crop_px=160, photos=None, roi_scale=ROI_SCALE):
        self.model = model
        self.image_px = int(image_px)
        self.crop_px = int(crop_px)
        self.roi_scale = float(roi_scale)
        self.photos = np.zeros((0, 8, 8, 3), np.uint8) if photos is None else photos
        self.faces = visible_faces(model)
        self.lm = np.array(load_landmark_set("dense703"))
        ib = np.array(load_landmark_set("ibug68"))
        self.ibug_in_lm = np.array([np.flatnonzero(self.lm == v)[0] for v in ib])
        T = model.template()
        self.T = np.ascontiguousarray(T, dtype=np.float64)
        lab = model.region_labels
        from lmfit3d.model import REGION_NAMES
        rid = {n: i for i, n in enumerate(REGION_NAMES)}
        skin = np.isin(lab, [rid["face"], rid["head_neck"], rid["eye_socket_L"], rid["eye_socket_R"]])
        front = skin & (T[:, 2] > 40)
        tib = T[ib]
        # regions as per-vertex masks on the neutral template
        self.lips = front & _point_in_polygon(T[:, :2], tib[48:60, :2])
        self.lips_inner = _point_in_polygon(T[:, :2], tib[60:68, :2])
        self.brow_dist = np.where(front, np.minimum(_dist_to_polyline(T[:, :2], tib[17:22, :2] - [0, 3]),
                                                    _dist_to_polyline(T[:, :2], tib[22:27, :2] - [0, 3])), np.inf)
        self.lid_dist = np.where(front, np.minimum(_dist_to_polyline(T[:, :2], tib[[36, 37, 38, 39], :2]),
                                                   _dist_to_polyline(T[:, :2], tib[[42, 43, 44, 45], :2])), np.inf)
        self.skin = skin
        self.mouth = np.isin(lab, [rid["mouth_socket"], rid["gums_tongue"]])
        self.teeth = lab == rid["teeth"]
        self.eyeball = np.isin(lab, [rid["eyeball_L"], rid["eyeball_R"]])
        joints = model.joints(None)
        centre = np.where((lab == rid["eyeball_L"])[:, None], joints[3], joints[4])
        d = T - centre
        self.eye_cos = np.where(self.eyeball, d[:, 2] / np.maximum(np.linalg.norm(d, axis=1), 1e-9), -1.0)
        nose_y = tib[33, 1]
        mouth_y = tib[51, 1]
        self.beard = front & (T[:, 1] < nose_y) & ~self.lips & (np.abs(T[:, 0]) < 75) & (T[:, 1] > tib[8, 1] - 25)
        self.mustache_y = (nose_y, mouth_y)
        self.cheek = np.exp(-np.minimum(np.sum((T[:, :2] - tib[2, :2] * [0.75, 1]) ** 2, 1),
                                        np.sum((T[:, :2] - tib[14, :2] * [0.75, 1]) ** 2, 1)) / (2 * 18.0 ** 2))
        self.cheek *= front
        self.nose_tip = np.exp(-np.sum((T[:, :2] - tib[30, :2]) ** 2, 1) / (2 * 12.0 ** 2)) * front
        self.brow_top = tib[19, 1]
        # the same, packed for shade_pixels
        self.vattr = np.ascontiguousarray(np.stack([self.cheek, self.nose_tip, self.lips.astype(float), self.eye_cos,
                                                    self.brow_dist, self.lid_dist], 1))
        self.vflags = (self.lips * F_LIPS | self.lips_inner * F_LIPS_INNER | self.skin * F_SKIN | self.beard * F_BEARD
                       | self.eyeball * F_EYE | self.teeth * F_TEETH | self.mouth * F_MOUTH).astype(np.uint8)
        self.faces = np.ascontiguousarray(self.faces, dtype=np.int64)
        self._no_colour = np.zeros((model.n_vertices, 3))
        self._no_image = np.zeros((self.image_px, self.image_px, 3), np.float32)

    # -- parameters ------------------------------------------------------------------------------
    def random_params(self, rng):
        m = self.model
        beta = rng.normal(size=m.n_identity) * rng.uniform(0.6, 1.2)
        psi = np.zeros(m.n_expression)
        n = rng.integers(0, 6)
        act = rng.choice(m.n_expression, size=n, replace=False)
        psi[act] = rng.uniform(0.0, 1.0, size=n) ** 0.7
        names = m.expression_names
        if rng.random() < 0.25:
            psi[names.index("jawOpen")] = rng.uniform(0.2, 1.0)
        if rng.random() < 0.1:
            b = rng.uniform(0.5, 1.0)
            psi[names.index("eyeBlink_L")] = psi[names.index("eyeBlink_R")] = b
        if rng.random() < 0.2:
            s = rng.uniform(0.2, 1.0)
            psi[names.index("mouthSmile_L")] = psi[names.index("mouthSmile_R")] = s
        rot = np.zeros((m.n_joints, 3))
        yaw = rng.uniform(-30, 30) if rng.random() < 0.7 else rng.uniform(-65, 65)
        rot[0] = np.radians([rng.uniform(-25, 25), yaw, rng.normal(0, 12)])
        rot[1] = rng.normal(scale=0.06, size=3)
        rot[2] = rng.normal(scale=0.06, size=3)
        gaze = rng.normal(scale=0.15, size=2) * [1.0, 1.5]
        rot[3:5, 0], rot[3:5, 1] = gaze[0], gaze[1]
        return Params(beta, psi, rot, np.zeros(3))

    # -- appearance ------------------------------------------------------------------------------
    def appearance(self, rng):
        """Random appearance of one face: colours (9, 3) (rows ``C_*``) and scalars (``A_N``,) (``A_*``).

        The draws come in a fixed order (the sample's random stream); :func:`shade_pixels` uses them.
        """
        cols = np.zeros((9, 3))
        a = np.zeros(A_N)
        t = rng.random() ** 1.3
        skin = SKIN_LIGHT * (1 - t) + SKIN_DARK * t
        skin = np.clip(skin * rng.uniform(0.9, 1.1, 3), 0.02, 1)
        a[A_BLOT] = rng.uniform(0.05, 0.25)                      # low-frequency blotches
        a[A_RED_CHEEK] = rng.uniform(0, 0.5)                     # redness of cheeks and nose
        a[A_RED_NOSE] = rng.uniform(0, 0.4)
        a[A_PORES] = rng.uniform(0.02, 0.12)
        a[A_SPEC] = rng.uniform(0.02, 0.3)
        lipcol = skin * rng.uniform(0.55, 0.9) * np.array([1.0, rng.uniform(0.55, 0.8), rng.uniform(0.6, 0.85)])
        if rng.random() < 0.15:
            lipcol = rng.random(3) * 0.7
        hair = HAIR[rng.integers(len(HAIR))] * rng.uniform(0.8, 1.2)
        a[A_STRAND:A_STRAND + 3] = np.array([0.5, 4.0, 4.0]) * rng.uniform(0.7, 1.4)   # brow strands cell
        a[A_BROW_W] = rng.uniform(2.5, 5.5)
        cols[C_BROW] = hair * 0.8 if rng.random() < 0.8 else skin * 0.35
        a[A_BROW_BLEND] = rng.uniform(0.6, 1.0)
        a[A_LID_W] = rng.uniform(0.8, 2.0)                        # eyelid line (lashes are not drawn)
        if rng.random() < 0.25:                                  # stubble
            a[A_STUBBLE] = 1.0
            a[A_STUBBLE_THR] = rng.uniform(0.35, 0.7)
            cols[C_STUBBLE] = hair * 0.5 * rng.uniform(0.3, 1.0)
        if rng.random() < 0.85:                                  # scalp hair
            a[A_SCALP] = 1.0
            a[A_HAIRLINE] = rng.uniform(self.brow_top + 20, self.brow_top + 55)
            a[A_BACK_LINE] = rng.uniform(-90, -20)
            a[A_HAIR_CELL:A_HAIR_CELL + 3] = np.array([1.0, 12.0, 1.0]) * rng.uniform(0.5, 2)
        a[A_IRIS_COS] = np.cos(np.radians(rng.uniform(24, 30)))
        a[A_PUPIL_COS] = np.cos(np.radians(rng.uniform(9, 14)))
        cols[C_IRIS] = IRIS[rng.integers(len(IRIS))] * rng.uniform(0.7, 1.3)
        cols[C_WHITE] = np.array([0.88, 0.85, 0.8]) * rng.uniform(0.7, 1.0)
        cols[C_TEETH] = np.array([0.9, 0.87, 0.78]) * rng.uniform(0.6, 1.0)
        cols[C_MOUTH] = np.array([0.4, 0.12, 0.12]) * rng.uniform(0.3, 0.8)
        cols[C_SKIN], cols[C_LIP], cols[C_HAIR] = skin, lipcol, hair
        return cols, a

    def lighting(self, rng):
        """Random lights: ambient (3,), directions (L, 3), colours (L, 3), shininess, image gain."""
        amb = rng.uniform(0.15, 0.55) * (1 + rng.uniform(-0.15, 0.15, 3))
        shin = rng.uniform(8, 60)
        lds, lis = [], []
        for k in range(rng.integers(1, 3)):
            ld = np.array([rng.uniform(-1, 1), rng.uniform(-0.5, 1), rng.uniform(0.1, 1.2)])
            lds.append(ld / np.linalg.norm(ld))
            lis.append(rng.uniform(0.4, 1.0) * (1.0 if k == 0 else 0.5) * (1 + rng.uniform(-0.2, 0.2, 3)))
        return amb, np.array(lds), np.array(lis), shin, rng.uniform(0.8, 1.2)

    # -- one sample ------------------------------------------------------------------------------
    def sample(self, rng, augment=True):
        """One random sample (dict): ``image`` (H, W, 3) uint8, ``points`` (703, 2) image px,
        ``visible`` (703,), and for each strategy s in (aligned, axis): ``crop_s`` (S, S, 3) uint8,
        ``points_s`` (703, 2) crop px, ``roi_s`` (cx, cy, size, rotation)."""
        m, H = self.model, self.image_px
        p = self.random_params(rng)
        cam = Camera.from_fov(H, H, rng.uniform(15, 60))
        face_px = rng.uniform(70, 150)
        depth = cam.focal * FACE_WIDTH_MM / face_px
        shift = rng.normal(0, 0.05, size=2) * depth
        p = p.replace(translation=np.array([shift[0], shift[1], -depth]))
        verts = evaluate_mesh(m, p)
        tri, bary = self.rasterize(verts, cam)
        pts = cam.project(verts[self.lm])
        # per-pixel appearance and shading, one pass over the image (background in place)
        img = np.ascontiguousarray(background(rng, self.photos, H, H), dtype=np.float64)
        seed = int(rng.integers(1 << 20))
        cols, app = self.appearance(rng)
        nv = np.empty_like(verts)
        vertex_normals(verts, self.faces, nv)
        amb, ld, li, shin, gain = self.lighting(rng)
        shade_pixels(img, tri, bary, self.faces, self.T, verts, nv, self.vattr, self.vflags, cols, app, seed,
                     amb, ld, li, shin, gain)
        # visibility: depth test at each landmark's pixel
        zc = -verts[:, 2]
        u = np.floor(pts).astype(np.int64)
        inside = (u[:, 0] >= 0) & (u[:, 0] < H) & (u[:, 1] >= 0) & (u[:, 1] < H)
        visible = np.zeros(len(pts), bool)
        ii = np.flatnonzero(inside)
        t = tri[u[ii, 1], u[ii, 0]]
        ok = t >= 0
        dpix = np.einsum("nk,nk->n", bary[u[ii, 1], u[ii, 0]][ok], zc[self.faces[t[ok]]])
        visible[ii[ok]] = zc[self.lm[ii[ok]]] <= dpix + 3.0
        # occluders
        if rng.random() < 0.35:
            img, occ = self._occluder(rng, img, pts)
            inb = np.clip(u, 0, H - 1)
            visible &= ~occ[inb[:, 1], inb[:, 0]]
        image = (img * 255 + 0.5).astype(np.uint8)
        out = {"image": image, "points": pts, "visible": visible, "params": p, "camera": cam, "vertices": verts,
               "tri": tri, "bary": bary}
        jit = rng.normal(size=4) * [0.05, 0.05, 0.08, 0.06]
        for strategy in ("aligned", "axis"):
            roi = self.roi(pts, strategy, jit)
            c = crop(image, roi, self.crop_px)
            c = (np.transpose(c, (1, 2, 0)) * 255 + 0.5).astype(np.uint8)
            out[f"crop_{strategy}"] = augment_crop(rng, c) if augment else c
            out[f"points_{strategy}"] = roi.to_crop(pts, self.crop_px)
            out[f"roi_{strategy}"] = np.array([roi.cx, roi.cy, roi.size, roi.rotation])
        return out

    def rasterize(self, verts, cam):
        """Triangle ids (H, W) int64 (-1: background) and perspective-correct barycentrics (H, W, 3)
        float32 of the drawn mesh (what :func:`lmfit3d.render.render` returns, without its image)."""
        H = self.image_px
        uv = np.empty((verts.shape[0], 2))
        project_points(verts, float(cam.focal), H / 2.0, H / 2.0, uv)
        zbuf = np.full((H, H), np.inf)
        tri = np.full((H, H), -1, np.int64)
        bary = np.zeros((H, H, 3), np.float32)
        rasterize(uv, -verts[:, 2], self.faces, self._no_colour, 0.0, self._no_image, zbuf, tri, bary)
        return tri, bary

    def roi(self, pts, strategy, jitter=(0.0, 0.0, 0.0, 0.0)):
        """The ROI of a face from its dense703 image points, with relative jitter (dx, dy, log scale, rot)."""
        r = roi_from_points(pts[self.ibug_in_lm], EYE_POINTS, self.roi_scale, strategy)
        rot = r.rotation + (jitter[3] if strategy == "aligned" else 0.0)
        return ROI(r.cx + jitter[0] * r.size, r.cy + jitter[1] * r.size, r.size * float(np.exp(jitter[2])), rot)

    def _occluder(self, rng, img, pts):
        H = self.image_px
        face = pts[self.ibug_in_lm]
        size = np.ptp(face, axis=0).max()
        c = face[rng.integers(len(face))] + rng.normal(0, 0.15, 2) * size
        yy, xx = np.mgrid[0:H, 0:H] + 0.5
        kind = rng.integers(0, 3)
        if kind == 0:                                    # ellipse
            a, b = rng.uniform(0.08, 0.35, 2) * size
            ang = rng.uniform(0, np.pi)
            dx, dy = xx - c[0], yy - c[1]
            x1, y1 = dx * np.cos(ang) + dy * np.sin(ang), -dx * np.sin(ang) + dy * np.cos(ang)
            occ = (x1 / a) ** 2 + (y1 / b) ** 2 < 1
        elif kind == 1:                                  # bar (microphone, strand, glasses arm)
            ang = rng.uniform(0, np.pi)
            w = rng.uniform(0.02, 0.12) * size
            d = np.abs((xx - c[0]) * np.sin(ang) - (yy - c[1]) * np.cos(ang))
            along = (xx - c[0]) * np.cos(ang) + (yy - c[1]) * np.sin(ang)
            occ = (d < w) & (np.abs(along) < rng.uniform(0.2, 1.0) * size)
        else:                                            # random polygon
            k = rng.integers(3, 8)
            ang = np.sort(rng.uniform(0, 2 * np.pi, k))
            rad = rng.uniform(0.1, 0.35, k) * size
            poly = c + np.stack([np.cos(ang) * rad, np.sin(ang) * rad], 1)
            occ = _point_in_polygon(np.stack([xx.ravel(), yy.ravel()], 1), poly).reshape(H, H)
        if rng.random() < 0.5:
            tone = SKIN_LIGHT * (1 - rng.random()) + SKIN_DARK * rng.random()
            tex = tone * (0.6 + 0.5 * noise2(rng, H, H, 20)[..., None])
        else:
            tex = background(rng, self.photos, H, H)
        img = np.where(occ[..., None], tex, img)
        return img, occ


def augment_crop(rng, c):
    """Photometric augmentation of an (S, S, 3) uint8 crop: colour jitter, grey, blur, noise, JPEG."""
    x = c.astype(np.float32) / 255.0
    if rng.random() < 0.8:
        x = x * rng.uniform(0.7, 1.3, 3).astype(np.float32) * rng.uniform(0.6, 1.4) + rng.uniform(-0.1, 0.1)
        g = rng.uniform(0.7, 1.4)
        x = np.clip(x, 0, 1) ** g
    if rng.random() < 0.15:
        x = np.repeat(x.mean(2, keepdims=True), 3, 2)
    if rng.random() < 0.3:
        from scipy.ndimage import gaussian_filter
        x = gaussian_filter(x, (rng.uniform(0.3, 1.8),) * 2 + (0,))
    if rng.random() < 0.4:
        x = x + rng.normal(0, rng.uniform(0.005, 0.05), x.shape).astype(np.float32)
    x = (np.clip(x, 0, 1) * 255 + 0.5).astype(np.uint8)
    if rng.random() < 0.4:
        try:
            from PIL import Image
            buf = io.BytesIO()
            Image.fromarray(x).save(buf, format="JPEG", quality=int(rng.integers(15, 90)))
            x = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
        except ImportError:
            pass
    return x


# ----------------------------------------------------------------------------------------------
# command line
# ----------------------------------------------------------------------------------------------

def _worker(args):
    out_dir, shard_ids, shard_size, seed, crop_px, image_px, photos_path, axis = args
    os.environ.setdefault("NUMBA_NUM_THREADS", "1")
    model = load_model()
    synth = FaceSynth(model, image_px=image_px, crop_px=crop_px, photos=photo_bank(photos_path))
    for s in shard_ids:
        rng = np.random.default_rng([seed, s])
        rows = [synth.sample(rng) for _ in range(shard_size)]
        d = {"crops": np.stack([r["crop_aligned"] for r in rows]),
             "points": np.stack([r["points_aligned"] for r in rows]).astype(np.float32),
             "visible": np.stack([r["visible"] for r in rows])}
        if axis:
            d["crops_axis"] = np.stack([r["crop_axis"] for r in rows])
            d["points_axis"] = np.stack([r["points_axis"] for r in rows]).astype(np.float32)
        tmp = Path(out_dir) / f".shard_{s:05d}.npz"
        np.savez(tmp, **d)
        os.replace(tmp, Path(out_dir) / f"shard_{s:05d}.npz")


def cmd_shards(a):
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    photos_path = a.photos or str(out / "photos.npz")
    photo_bank(photos_path)
    n_shards = int(np.ceil(a.n / a.shard_size))
    ids = list(range(a.first_shard, a.first_shard + n_shards))
    jobs = [(str(out), ids[w::a.workers], a.shard_size, a.seed, a.crop, a.image, photos_path, a.axis)
            for w in range(a.workers)]
    t = time.perf_counter()
    if a.workers == 1:
        _worker(jobs[0])
    else:
        import multiprocessing as mp
        with mp.get_context("spawn").Pool(a.workers) as pool:
            pool.map(_worker, jobs)
    dt = time.perf_counter() - t
    (out / "info.json").write_text(json.dumps({"images": n_shards * a.shard_size, "seconds": dt,
                                               "crop_px": a.crop, "image_px": a.image, "roi_scale": ROI_SCALE}))
    print(f"{n_shards * a.shard_size} samples in {dt:.1f} s ({n_shards * a.shard_size / dt:.1f} / s)")


def cmd_mosaic(a):
    from PIL import Image
    from lmfit3d.imaging import draw_points
    model = load_model()
    synth = FaceSynth(model, image_px=a.image, crop_px=a.crop, photos=photo_bank(a.photos))
    rng = np.random.default_rng(a.seed)
    tiles = []
    for i in range(a.rows * a.cols):
        s = synth.sample(rng)
        key = "aligned" if i % 2 == 0 else "axis"
        t = s[f"crop_{key}"].copy()
        vis = s["visible"]
        d320 = np.isin(synth.lm, load_landmark_set("dense320"))
        draw_points(t, np.where((vis & d320)[:, None], s[f"points_{key}"], np.nan), 1.0, np.array([0, 255, 0], np.uint8))
        draw_points(t, np.where((~vis & d320)[:, None], s[f"points_{key}"], np.nan), 1.0, np.array([255, 0, 0], np.uint8))
        tiles.append(np.concatenate([s[f"crop_{key}"], t], 0))
    rows = [np.concatenate(tiles[r * a.cols:(r + 1) * a.cols], 1) for r in range(a.rows)]
    Image.fromarray(np.concatenate(rows, 0)).save(a.out)
    print(a.out)


def cmd_bench(a):
    model = load_model()
    synth = FaceSynth(model, image_px=a.image, crop_px=a.crop, photos=photo_bank(a.photos))
    rng = np.random.default_rng(0)
    synth.sample(rng)
    ts = []
    for _ in range(a.n):
        t = time.perf_counter()
        synth.sample(rng)
        ts.append(time.perf_counter() - t)
    med = float(np.median(ts))
    print(json.dumps({"median_s": med, "mean_s": float(np.mean(ts)), "per_core_per_s": 1 / med,
                      "minutes_100k_2cores": 1e5 * med / 2 / 60}))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("shards", help="write training shards")
    s.add_argument("out")
    s.add_argument("--n", type=int, default=1000)
    s.add_argument("--shard-size", type=int, default=500)
    s.add_argument("--first-shard", type=int, default=0)
    s.add_argument("--workers", type=int, default=1)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--axis", action="store_true", help="also store the axis-aligned crops")
    for p in (s, sub.add_parser("mosaic", help="PNG of samples"), sub.add_parser("bench", help="speed")):
        p.add_argument("--crop", type=int, default=160)
        p.add_argument("--image", type=int, default=288)
        p.add_argument("--photos", default=None, help="photo bank .npz (built from skimage.data if missing)")
        if p.prog.endswith("mosaic"):
            p.add_argument("out")
            p.add_argument("--rows", type=int, default=3)
            p.add_argument("--cols", type=int, default=6)
            p.add_argument("--seed", type=int, default=1)
        if p.prog.endswith("bench"):
            p.add_argument("--n", type=int, default=30)
    a = ap.parse_args(argv)
    {"shards": cmd_shards, "mosaic": cmd_mosaic, "bench": cmd_bench}[a.cmd](a)


if __name__ == "__main__":
    main()
