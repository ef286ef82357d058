"""Offline capture benchmarks (pytest-benchmark), one thread: the energy's cost + gradient over all
frames and cameras, and a short L-BFGS solve.

Run::

    python -m pytest bench/test_bench_capture.py -q --benchmark-only

A synthetic sequence (``lmfit3d.synthetic.make_multiview``: 60 frames x 4 cameras, dense320, 1 px
noise), the problem at a perturbed start.  ``energy``: ``CaptureProblem.energy`` (cost and
gradient, what L-BFGS calls); ``energy_diag``: with the Gauss-Newton diagonal (the preconditioner);
``solve``: ``CaptureProblem.solve`` with every parameter free, 40 iterations.  ``bench/ab_report.py``
compares them with another revision in the same run.
"""

import numpy as np
import pytest

from lmfit3d.capture import CaptureConfig, CaptureProblem, CaptureSolver, validate_multiview
from lmfit3d.landmarks import load_landmark_set
from lmfit3d.rotation import matrix_to_axis_angle
from lmfit3d.synthetic import make_multiview


@pytest.fixture(scope="module")
def problem(model):
    ids = load_landmark_set("dense320")
    views = make_multiview(model, ids, np.random.default_rng(3), n_cameras=4, n_frames=60, noise_px=1.0)
    mu, inv = validate_multiview(views.mu, views.sigma, ids.size)
    cfg = CaptureConfig(solver=CaptureSolver(max_iter=40))
    prob = CaptureProblem(model, ids, mu, inv, views.image_size, cfg, views.params[0].identity)
    rng = np.random.default_rng(4)
    lo, hi = prob.bounds()
    z = np.zeros(prob.n)
    z[:prob.nk] = views.params[0].identity
    for f, p in enumerate(views.params):
        rot = p.rotations.copy()
        rot[0] += rng.normal(scale=0.02, size=3)
        prob.layout.set_frame(z, f, rot, p.translation + rng.normal(scale=2.0, size=3),
                              np.clip(p.expression + rng.normal(scale=0.05, size=prob.ne), 0, 1))
    for j in range(prob.n_cameras):
        prob.layout.set_camera(z, j, matrix_to_axis_angle(views.rotation[j]), views.translation[j], views.focal[j])
    return prob, np.clip(z, lo, hi)


def test_capture_energy(benchmark, problem):
    prob, z = problem
    benchmark.group = "capture"
    cost, grad, _ = benchmark(prob.energy, z)
    assert np.isfinite(cost) and np.isfinite(grad).all()


def test_capture_energy_diag(benchmark, problem):
    prob, z = problem
    benchmark.group = "capture"
    cost, _, diag = benchmark(prob.energy, z, True, True)
    assert np.isfinite(cost) and (diag >= 0).all()


def test_capture_solve(benchmark, problem):
    prob, z0 = problem
    benchmark.group = "capture"
    free = np.ones(prob.n, bool)
    z, res = benchmark.pedantic(prob.solve, args=(z0, free), rounds=3, iterations=1, warmup_rounds=1)
    assert prob.energy(z, want_grad=False)[0] < prob.energy(z0, want_grad=False)[0]
