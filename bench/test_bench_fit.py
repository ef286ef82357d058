"""Per-frame tracking fit benchmarks (pytest-benchmark), one thread, warm start.

Run::

    python -m pytest bench/test_bench_fit.py -q --benchmark-only     # timings
    python -m pytest bench/test_bench_fit.py -q                      # + the correctness checks
    python bench/fit_report.py                                       # markdown table

Scenario (per landmark set, ``dense320`` and ``dense703``): a synthetic clip from
``lmfit3d.synthetic`` with small motion between consecutive frames (about 1 degree of head
rotation and a slow expression drift per frame, 1 px landmark noise, 10 % of landmarks with a
15 px sigma and matching noise).  A :class:`~lmfit3d.fit.Tracker` with the identity and focal
length given (so no keyframe identity refit can happen) tracks the first ``N_WARM`` frames; the
timed call restores the tracker's warm state (``x``, ``prev``) and steps frame ``N_WARM``.

Benchmarks (group = landmark set):

* ``step``          ``Tracker.step(mu, sigma)``: problem set-up + LM solve + landmark positions;
* ``step_classic``  the same with J^T J re-use off (``FitConfig(jtj_reuse_rho=inf)``: a fresh
                    J^T J after every accepted step), the previous solver, as a same-run baseline;
* ``lm_solve``      the bare ``FrameProblem.solve(x, masks(...), max_iter)`` on the same problem;
* ``scipy_trf``     ``scipy.optimize.least_squares`` (trf, 2-point finite-difference Jacobian,
                    ``x_scale="jac"``, default tolerances) on the same energy from the same start
                    (``bench/baseline_scipy.py``);
* ``scipy_trf_ftol``  the same with ``ftol=xtol=`` our solver's tolerances (a faster, looser scipy).

Goals: step median <= 0.5 ms (dense320), <= 1.0 ms (dense703); ours >= 20x faster than scipy to
the same final cost (final costs agree within 1 %: ``test_final_cost_matches_scipy``).
"""

import one_thread  # noqa: E402,F401  (before NumPy: every thread pool at one thread)

import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))

from baseline_scipy import ScipyFrameBaseline  # noqa: E402
from lmfit3d.fit import FitConfig, Tracker  # noqa: E402
from lmfit3d.problem import masks  # noqa: E402
from lmfit3d.landmarks import load_landmark_set  # noqa: E402
from lmfit3d.synthetic import make_frame, random_params  # noqa: E402

SETS = ("dense320", "dense703")
GOAL_MS = {"dense320": 0.5, "dense703": 1.0}
N_WARM = 6                  # frames tracked before the timed frame
SEED = 2022
NOISE_PX = 1.0
OUTLIER_FRACTION = 0.1


@pytest.fixture(scope="module")
def face_model(request):
    """The face model: ``bench/conftest.py``'s ``model`` fixture when there is one, else the cache."""
    try:
        return request.getfixturevalue("model")
    except pytest.FixtureLookupError:
        from lmfit3d.model import load_model
        return load_model()


def make_sequence(model, vertex_ids, n_frames, seed=SEED, noise_px=NOISE_PX,
                  outlier_fraction=OUTLIER_FRACTION):
    """A synthetic clip with small inter-frame motion; returns (true Params of frame 0, frames)."""
    rng = np.random.default_rng(seed)
    p0 = random_params(model, rng, yaw_deg=15.0, pitch_deg=8.0, roll_deg=5.0)
    # per-frame increments: ~1 degree head rotation, slow expression drift, small neck/eye motion
    d_root = np.radians(rng.uniform(-1.0, 1.0, size=3)) * np.array([0.5, 1.0, 0.3])
    d_expr = np.where(p0.expression > 0, rng.uniform(-0.03, 0.03, size=model.n_expression), 0.0)
    frames = []
    walk = np.zeros_like(p0.rotations[1:])
    for f in range(n_frames):
        rot = p0.rotations.copy()
        rot[0] += f * d_root
        if f:
            walk += rng.normal(scale=0.002, size=walk.shape)     # neck/head/eye random walk
        rot[1:] += walk
        psi = np.clip(p0.expression + f * d_expr, 0.0, 1.0)
        p = p0.replace(rotations=rot, expression=psi)
        frames.append(make_frame(model, p, vertex_ids, rng, noise_px=noise_px,
                                 outlier_fraction=outlier_fraction))
    return p0, frames


class Scenario:
    """Warm tracker state for one landmark set, plus the timed frame's problem."""

    def __init__(self, model, name, config=None):
        self.model = model
        self.name = name
        self.cfg = config or FitConfig()
        ids = load_landmark_set(name)
        self.p0, self.frames = make_sequence(model, ids, N_WARM + 1)
        cam = self.frames[0].camera
        self.tracker = Tracker(model, ids, (cam.width, cam.height), cam.focal, self.cfg,
                               identity=self.p0.identity)
        self.warm_fits = [self.tracker.step(fr.mu, fr.sigma) for fr in self.frames[:N_WARM]]
        self.x0 = self.tracker.x.copy()
        self.prev0 = self.tracker.prev.copy()
        self.frame = self.frames[N_WARM]
        self.mask = masks(model, "pose", "joints", "expression", eyes=self.cfg.fit_eyes)
        self.n_keyframes = len(self.tracker.keyframes)

    def step(self):
        """Restore the warm state and track the next frame (what the benchmark times)."""
        tr = self.tracker
        tr.x = self.x0.copy()
        tr.prev = self.prev0.copy()
        return tr.step(self.frame.mu, self.frame.sigma)

    def problem(self):
        """The timed frame's FrameProblem (temporal term to the warm frame), as step builds it."""
        return self.tracker._problem(self.frame.mu, self.frame.sigma, self.prev0)

    def start(self):
        """The warm start step() uses: previous frame's x with the (fixed) identity and focal."""
        return self.x0.copy()

    def lm_solve(self, prob):
        return prob.solve(self.start(), self.mask, self.cfg.max_iter)

    def scipy_solve(self, prob, **kw):
        return ScipyFrameBaseline(prob, self.start(), self.mask).solve(**kw)


_SCENARIOS = {}
CLASSIC = FitConfig(jtj_reuse_rho=float("inf"))


def scenario(model, name, classic=False):
    key = (name, classic)
    if key not in _SCENARIOS:
        _SCENARIOS[key] = Scenario(model, name, CLASSIC if classic else None)
    return _SCENARIOS[key]


# -- benchmarks ----------------------------------------------------------------------------------

@pytest.mark.parametrize("classic", [False, True], ids=["reuse", "classic"])
@pytest.mark.parametrize("name", SETS)
def test_step(benchmark, face_model, name, classic):
    sc = scenario(face_model, name, classic)
    benchmark.group = name
    benchmark.extra_info.update(kind="step_classic" if classic else "step", landmarks=name)
    if not classic:
        benchmark.extra_info.update(goal_ms=GOAL_MS[name])
    fit = benchmark(sc.step)
    assert len(sc.tracker.keyframes) == sc.n_keyframes == 0, "keyframe refit inside the timed call"
    benchmark.extra_info.update(cost=fit.cost, iterations=fit.iterations, status=fit.status,
                                jtj_evals=fit.jtj_evals)
    assert np.isfinite(fit.cost)
    assert (fit.jtj_evals == fit.iterations) if classic else (fit.jtj_evals < fit.iterations)


@pytest.mark.parametrize("name", SETS)
def test_lm_solve(benchmark, face_model, name):
    sc = scenario(face_model, name)
    prob = sc.problem()
    benchmark.group = name
    benchmark.extra_info.update(kind="lm_solve", landmarks=name)
    _, res = benchmark(sc.lm_solve, prob)
    benchmark.extra_info.update(cost=res.cost, iterations=res.iterations, status=res.status,
                                jtj_evals=res.jtj_evals)
    assert np.isfinite(res.cost)


@pytest.mark.parametrize("name", SETS)
def test_lm_solve_python_driver(benchmark, face_model, name):
    """The same solve as test_lm_solve through the Python LM driver (``solvers.levenberg_marquardt`` calling
    ``FrameProblem.accumulate``, the compiled evaluation): the cost of serving the tracking problem by the
    one general loop instead of the compiled twin; same iterations and result."""
    sc = scenario(face_model, name)
    prob = sc.problem()
    benchmark.group = name
    benchmark.extra_info.update(kind="python_driver", landmarks=name)
    x, res = benchmark(lambda p: p.solve(sc.start(), sc.mask, sc.cfg.max_iter, compiled=False), prob)
    x_c, res_c = sc.lm_solve(prob)
    benchmark.extra_info.update(cost=res.cost, iterations=res.iterations, jtj_evals=res.jtj_evals)
    assert res.iterations == res_c.iterations and res.cost == res_c.cost
    np.testing.assert_array_equal(x, x_c)


@pytest.mark.parametrize("tol", ["default", "ftol"])
@pytest.mark.parametrize("name", SETS)
def test_scipy_trf(benchmark, face_model, name, tol):
    sc = scenario(face_model, name)
    prob = sc.problem()
    kw = {} if tol == "default" else dict(ftol=sc.cfg.ftol, xtol=sc.cfg.xtol)
    benchmark.group = name
    benchmark.extra_info.update(kind="scipy_trf" if tol == "default" else "scipy_trf_ftol", landmarks=name,
                                tolerances=tol)
    _, res = benchmark.pedantic(sc.scipy_solve, args=(prob,), kwargs=kw, rounds=5, iterations=1,
                                warmup_rounds=1)
    benchmark.extra_info.update(cost=float(res.cost), nfev=int(res.nfev), status=int(res.status))
    assert np.isfinite(res.cost)


# -- correctness (not benchmarks) -----------------------------------------------------------------

@pytest.mark.parametrize("name", SETS)
def test_residuals_match_problem_cost(face_model, name):
    """0.5 |r(z)|^2 of the scipy baseline equals FrameProblem.accumulate(z, want_jac=False)."""
    sc = scenario(face_model, name)
    prob = sc.problem()
    base = ScipyFrameBaseline(prob, sc.start(), sc.mask)
    prob.set_free(sc.mask, sc.start())
    lo, hi = prob.bounds()
    rng = np.random.default_rng(7)
    z0 = sc.start()[prob.free]
    sl = prob.sl
    e = np.flatnonzero(prob.free >= sl["expression"].start)
    zs = [z0, sc.lm_solve(prob)[0][prob.free]]
    for scale in (0.01, 0.1):
        z = z0 + rng.normal(scale=scale, size=z0.size)
        zs.append(z)
    # strong expressions, to drive eyelids into the eyeballs and lips into the teeth
    z = z0.copy()
    z[e] = rng.uniform(0.0, 1.0, size=e.size)
    zs.append(z)
    inter_seen = False
    empty2, empty1 = np.zeros((0, 0)), np.zeros(0)
    for z in zs:
        z = np.clip(z, lo, hi)
        ours = prob.accumulate(z, empty2, empty1, False)
        r = base.residuals(z)
        assert r.shape == base.residuals(z0).shape
        np.testing.assert_allclose(0.5 * r @ r, ours, rtol=1e-10)
        if base.use_inter:
            inter_seen |= bool(np.any(base.intersection_residuals(prob.full(z)[sl["expression"]]) != 0))
    assert base.use_inter and inter_seen, "the intersection term was not exercised"
    assert base.tw > 0 and base.tmp_ok.all(), "the temporal term was not exercised"


@pytest.mark.parametrize("name", SETS)
def test_final_cost_matches_scipy(face_model, name):
    """Our per-frame LM and scipy's trf reach the same final cost (within 1 %) from the same start."""
    sc = scenario(face_model, name)
    prob = sc.problem()
    x, res = sc.lm_solve(prob)
    _, sres = sc.scipy_solve(prob)
    fit = sc.step()
    assert fit.cost == pytest.approx(res.cost, rel=1e-12)      # step solves the same problem
    assert res.status >= 0
    assert abs(res.cost - sres.cost) <= 0.01 * sres.cost, (res.cost, sres.cost)


def test_no_keyframe_refit_in_step(face_model):
    """With identity and focal given the tracker never collects keyframes (nothing to refit)."""
    for name in SETS:
        sc = scenario(face_model, name)
        sc.step()
        assert sc.tracker.keyframes == []
