"""Synthetic-data generator benchmarks (issue 6, pytest-benchmark), one thread.

Run::

    python -m pytest bench/test_bench_synth.py -q --benchmark-only

Groups (``benchmark.group``) and goals (``extra_info["goal_us"]``):

* ``synth_shading``: per-pixel appearance + lighting of one 288-px render (appearance and light
  parameters, vertex normals, ``shade_pixels``); baseline: the NumPy formulation it replaced
  (``tests/test_synth_shading.py``), on the same render and random stream.
* ``synth_sample``: one full training sample (``FaceSynth.sample``: mesh, raster, shading,
  background, occluders, both crops, augmentation).  Goal <= 36 ms, the issue's 100k samples in
  30 min with 2 workers.  The old code's figure is in docs/history/NOTES_synth_speed.md (alternating runs).

Every benchmark first checks that what it times computes the right thing.
"""
import os
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
sys.path.insert(0, str(ROOT / "tests"))

import synth_faces as sf  # noqa: E402
from test_synth_shading import _shade_reference  # noqa: E402

from lmfit3d.camera import Camera  # noqa: E402
from lmfit3d.render import vertex_normals  # noqa: E402
from lmfit3d.skinning import evaluate_mesh  # noqa: E402

H = 288


@pytest.fixture(scope="module")
def synth(model):
    photos = Path(os.path.expanduser("~/.cache/lmfit3d/synth_photos.npz"))
    return sf.FaceSynth(model, image_px=H, crop_px=160, photos=sf.photo_bank(photos if photos.is_file() else None))


@pytest.fixture(scope="module")
def frame(synth):
    """A fixed render: camera-space vertices, triangle ids and barycentrics, a background."""
    rng = np.random.default_rng(2022)
    cam = Camera.from_fov(H, H, 30.0)
    p = synth.random_params(rng).replace(translation=np.array([0.0, 0.0, -cam.focal * sf.FACE_WIDTH_MM / 120.0]))
    verts = evaluate_mesh(synth.model, p)
    tri, bary = synth.rasterize(verts, cam)
    return verts, tri, bary, rng.random((H, H, 3))


def _fused(synth, verts, tri, bary, bg, seed):
    rng = np.random.default_rng(seed)
    img = bg.copy()
    cols, app = synth.appearance(rng)
    nv = np.empty_like(verts)
    vertex_normals(verts, synth.faces, nv)
    amb, ld, li, shin, gain = synth.lighting(rng)
    sf.shade_pixels(img, tri, bary, synth.faces, synth.T, verts, nv, synth.vattr, synth.vflags, cols, app, 77,
                    amb, ld, li, shin, gain)
    return img


@pytest.mark.parametrize("impl", ["numba", "numpy"])
def test_synth_shading(benchmark, synth, frame, impl):
    verts, tri, bary, bg = frame
    if impl == "numba":
        def run():
            return _fused(synth, verts, tri, bary, bg, 5)
    else:
        def run():
            return _shade_reference(synth, np.random.default_rng(5), bg, verts, tri, bary, 77)
    np.testing.assert_allclose(run(), _shade_reference(synth, np.random.default_rng(5), bg, verts, tri, bary, 77),
                               atol=1e-12)
    benchmark.group = "synth_shading"
    benchmark.extra_info["impl"] = impl
    benchmark(run)


def test_synth_sample(benchmark, synth):
    rng = np.random.default_rng(0)
    s = synth.sample(rng)
    assert s["crop_aligned"].shape == (160, 160, 3) and s["points"].shape == (703, 2)
    benchmark.group = "synth_sample"
    benchmark.extra_info["impl"] = "numba"
    benchmark.extra_info["goal_us"] = 36000
    benchmark.pedantic(synth.sample, args=(rng,), rounds=40, iterations=1, warmup_rounds=2)
