"""Choose a landmark set for reconstruction: greedy Bayesian experimental design (``dense320v2``).

Usage::

    python tools/select_landmarks.py              # (re)write data/landmarks/dense320v2.txt
    python tools/select_landmarks.py --check      # exit 1 if the committed file differs
    python tools/select_landmarks.py --n 320 --name dense320v2 --out-dir /tmp --verbose

Needs the built face model (``lmfit3d model build``) and ICT-FaceKit's ``vertex_indices.json``
(the ibug68 seeds; ``$ICT_FACEKIT`` or ``../shared/ict-facekit``).  Deterministic: the design faces
come from a fixed seed and ties go to the lowest candidate; BLAS runs single-threaded.  About a
minute on one core.

Why.  ``dense320`` (``tools/make_landmark_sets.py``) spreads points evenly over the front of the face
(farthest-point sampling within hand-set group quotas).  On single images it is far behind dense703
(``bench/accuracy.py``): the points that pin down the depth of the face, its width and the jaw line
sit on the sides, the jaw and the neck, which an even spread on the front under-samples.  Here the
set is chosen for what the fit estimates instead.

Criterion.  The single-image fit is a maximum a posteriori estimate; linearised at the true
parameters its error covariance is ``P = (J^T W J + Lambda)^-1``, with ``J`` the Jacobian of the
landmarks' pixel positions w.r.t. pose (18), expression (53) and identity (100) (focal known, as in
the accuracy benchmark), ``W`` the landmarks' inverse noise variances and ``Lambda`` the fitter's
priors (``FitConfig`` defaults: identity 1, expression 2 w_e, non-root joints 2 w_j, root pose
free).  The benchmark measures the face region's per-vertex error after rigid alignment, so the
expected mean squared vertex error is ``tr(H P)`` with ``H = G^T G / n``: ``G`` is the Jacobian of
(a subsample of) the face-region vertices with the six rigid motions projected out.  The greedy
step adds the candidate that lowers ``sum_faces tr(H P)`` most (Bayesian A/I-optimal design; the
gain of a candidate with whitened rows ``a`` (2, p) is ``tr(S^-1 a P H P a^T)``, ``S = I + a P
a^T``, and the per-face states ``A P`` and ``A P H P`` over all candidates ``A`` get rank-2 updates,
so a step costs O(candidates x parameters) per face).  ``--criterion d`` uses the D-optimal gain
``log det S`` (information about all parameters) instead, for comparison.

Design faces (``N_FACES``, seed ``SEED``): identity from the prior, head yaw uniform in +-65 degrees
(pitch +-20, roll +-10), half with a sparse random expression, half with a strong one
(``synthetic.strong_expression``), face 256 px in a 512 px image (30 degree FOV), as in
``bench/accuracy.py``.  A landmark's noise is 1 px where its surface faces the camera, 10 px where
it faces away (a network predicts hidden points with a large sigma), so points the wide yaw hides
count little.

Candidates: only points a network can see and label: the skin of the face (``face_front``,
``face_outer``), the lid margins, the inner lips (``mouth_inner``: visible when the mouth opens),
the ears, scalp and neck (the groups of ``tools/make_landmark_sets.py``); no teeth.  The pool is a
symmetric farthest-point subsample of these (``POOL_SIZE``).  Points at the back of the head are
candidates but hidden on every design face (10 px), so none is chosen: the side of the head, the
ears and the neck are, where a turned head shows them.  Seeds, always in the set: ``ibug68``
(so the 68 points stay a subset) and per eye the pupil and five iris-ring points (as ``dense320``:
the right eye's are the mirror images of the left's).
Picks are symmetric (a candidate and its mirror twin, or a midline point), and no two landmarks are
closer than ``MIN_SEPARATION_MM`` on the neutral mesh (neighbouring points carry correlated errors
in a real network, which the independent-noise model does not know).

File order: seeds (ibug68, iris L, iris R), then the picks in greedy order.
"""
import argparse
import os
import sys
from pathlib import Path

for _v in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

from lmfit3d.camera import Camera  # noqa: E402
from lmfit3d.fit import FitConfig  # noqa: E402
from lmfit3d.skinning import POSE_DIM, evaluate_mesh, evaluate_points  # noqa: E402
from lmfit3d.synthetic import FACE_WIDTH_MM, random_params, strong_expression  # noqa: E402

OUT_DIR = ROOT / "data" / "landmarks"
NAME = "dense320v2"
N_POINTS = 320
SEED = 320
N_FACES = 32
YAW_DEG, PITCH_DEG, ROLL_DEG = 65.0, 20.0, 10.0
FACE_PX, IMAGE_PX, FOV_DEG = 256.0, 512, 30.0
NOISE_PX = 1.0
HIDDEN_SIGMA_PX = 10.0
POOL_SIZE = 2400
MIN_SEPARATION_MM = 6.0
METRIC_STRIDE = 8                 # every 8th face-region vertex for H
ROOT_PRIOR = 1e-6                 # root rotation and translation: (almost) no prior
INACTIVE_EXPRESSION_PRIOR = 50.0  # shapes at 0 in the truth: the fitter's bound psi >= 0 holds them
POOL_GROUPS = ("face_front", "face_outer", "eyelid_L", "eyelid_R", "mouth_inner", "ear_L", "ear_R",
               "scalp", "neck")
SEED_IBUG68 = True                # keep ibug68 a subset (its NME comparisons, the 68-point outputs)
IRIS_POINTS = 6                   # pupil + every second of the 10 ring points (as dense320)


# ------------------------------------------------------------------------------------------------
# the linearised problem
# ------------------------------------------------------------------------------------------------

def prior_precision(model, expression=None, config=None):
    """Diagonal of the fitter's prior Hessian over [pose (18), expression (E), identity (K)].

    Energy convention ``E = 1/2 |r|^2 + w_e |psi|^2 + w_j |theta_1..|^2 + w_id 1/2 |beta|^2`` (identity
    GMM read as its unit Gaussian): Hessians 2 w_e, 2 w_j and w_id; the root rotation and translation
    get ``ROOT_PRIOR``.  With the true ``expression`` (E,) given, shapes at 0 get
    ``INACTIVE_EXPRESSION_PRIOR`` instead: the fitter bounds psi to [0, 1], so a shape the face does not
    use is mostly held at its bound, not free in both directions as a Gaussian prior would have it.
    """
    cfg = config or FitConfig()
    lam = np.empty(POSE_DIM + model.n_expression + model.n_identity)
    lam[:6] = ROOT_PRIOR
    lam[6:POSE_DIM] = 2.0 * cfg.w_joints
    lam[POSE_DIM:POSE_DIM + model.n_expression] = 2.0 * cfg.w_expression
    lam[POSE_DIM + model.n_expression:] = cfg.w_identity
    if expression is not None:
        ex = lam[POSE_DIM:POSE_DIM + model.n_expression]
        ex[np.asarray(expression) <= 0] = INACTIVE_EXPRESSION_PRIOR
    return lam


def design_faces(model, n, seed=SEED):
    """``n`` design faces: list of (Params with translation, Camera) (see the module docstring)."""
    cam = Camera.from_fov(IMAGE_PX, IMAGE_PX, FOV_DEG)
    depth = cam.focal * FACE_WIDTH_MM / FACE_PX
    out = []
    for i in range(n):
        rng = np.random.default_rng([seed, i])
        p = random_params(model, rng, yaw_deg=YAW_DEG, pitch_deg=PITCH_DEG, roll_deg=ROLL_DEG)
        if i % 2:
            p = p.replace(expression=strong_expression(model, rng))
        out.append((p.replace(translation=np.array([0.0, 0.0, -depth])), cam))
    return out


def pixel_jacobian(model, params, cam, ids):
    """Projected positions' Jacobian (L, 2, p) in pixels w.r.t. [pose, expression, identity]."""
    x, jac = evaluate_points(model, params, ids, with_identity=True)
    z = x[:, 2]
    f = cam.focal
    du = np.stack([-f / z, np.zeros_like(z), f * x[:, 0] / z ** 2], axis=1)      # u = cx - f x / z
    dv = np.stack([np.zeros_like(z), f / z, -f * x[:, 1] / z ** 2], axis=1)      # v = cy + f y / z
    return np.stack([np.einsum("lk,lkp->lp", du, jac), np.einsum("lk,lkp->lp", dv, jac)], axis=1)


def landmark_sigma(model, params, cam, ids):
    """Per-landmark noise (L,) px: ``NOISE_PX`` facing the camera, ``HIDDEN_SIGMA_PX`` facing away."""
    from lmfit3d.render import vertex_normals
    v = evaluate_mesh(model, params)
    nrm = np.empty_like(v)
    vertex_normals(np.ascontiguousarray(v), np.ascontiguousarray(model.faces, dtype=np.int64), nrm)
    facing = np.einsum("lk,lk->l", nrm[ids], -v[ids]) > 0.0       # camera at the origin
    return np.where(facing, NOISE_PX, HIDDEN_SIGMA_PX)


def metric_hessian(model, params, stride=METRIC_STRIDE):
    """H (p, p): mean squared face-vertex displacement per parameter step, rigid motions projected out."""
    ids = np.flatnonzero(model.face_mask())[::stride]
    x, g = evaluate_points(model, params, ids, with_identity=True)
    n = ids.size
    r = x - x.mean(axis=0)
    basis = np.zeros((n, 3, 6))
    for k in range(3):
        e = np.zeros(3)
        e[k] = 1.0
        basis[:, k, k] = 1.0                           # translation
        basis[:, :, 3 + k] = np.cross(e, r)            # rotation about the centroid
    q, _ = np.linalg.qr(basis.reshape(3 * n, 6))
    g = g.reshape(3 * n, -1)
    g = g - q @ (q.T @ g)
    return g.T @ g / n


# ------------------------------------------------------------------------------------------------
# greedy selection
# ------------------------------------------------------------------------------------------------

def _inv2(s):
    """Inverses of (..., 2, 2) matrices."""
    det = s[..., 0, 0] * s[..., 1, 1] - s[..., 0, 1] * s[..., 1, 0]
    out = np.empty_like(s)
    out[..., 0, 0] = s[..., 1, 1]
    out[..., 1, 1] = s[..., 0, 0]
    out[..., 0, 1] = -s[..., 0, 1]
    out[..., 1, 0] = -s[..., 1, 0]
    return out / det[..., None, None]


class _FaceState:
    """One design face: whitened candidate rows A (C, 2, p), M = A P and N = A P H P."""

    def __init__(self, a, h, prior, seeds):
        self.a = a
        info = np.diag(prior)
        if len(seeds):
            s = a[seeds].reshape(-1, a.shape[2])
            info = info + s.T @ s
        p = np.linalg.inv(info)
        p = 0.5 * (p + p.T)
        self.m = a @ p                                 # (C, 2, p)
        self.n = self.m @ (h @ p)
        self.trace = float(np.sum(h * p))              # tr(H P): expected mean squared vertex error

    def gains(self, criterion):
        s = np.einsum("cip,cjp->cij", self.m, self.a)
        s[:, 0, 0] += 1.0
        s[:, 1, 1] += 1.0
        if criterion == "d":
            return np.log(s[:, 0, 0] * s[:, 1, 1] - s[:, 0, 1] * s[:, 1, 0])
        t = np.einsum("cip,cjp->cij", self.n, self.a)
        return np.einsum("cij,cji->c", _inv2(s), t)

    def add(self, c):
        ac, mc, nc = self.a[c], self.m[c].copy(), self.n[c].copy()
        s = mc @ ac.T + np.eye(2)
        si = _inv2(s)
        h = nc @ ac.T
        am = self.m @ ac.T                             # (C, 2, 2) = A P a_c^T
        bn = self.n @ ac.T                             # (C, 2, 2) = A P H P a_c^T
        self.trace -= float(np.trace(si @ h))
        self.n -= am @ (si @ nc) + bn @ (si @ mc) - am @ (si @ h @ si @ mc)
        self.m -= am @ (si @ mc)


def greedy_select(jacobians, sigmas, hessians, prior, positions, mirror, seeds, n, *,
                  min_separation=MIN_SEPARATION_MM, criterion="a", verbose=False):
    """Greedy symmetric design: local candidate indices (n,), seeds first, then picks in order.

    Parameters
    ----------
    jacobians : (F, C, 2, p) float, pixel Jacobians of the C candidates on F design faces.
    sigmas : (F, C) float, landmark noise (px) per face.
    hessians : (F, p, p) float, the error metric's H per face (``metric_hessian``).
    prior : (F, p) float, prior precision diagonal per face (``prior_precision``).
    positions : (C, 3) float, neutral positions (mm; for the minimum separation).
    mirror : (C,) int, each candidate's mirror twin (itself on the midline, -1: none, never picked).
    seeds : sequence of candidate indices always in the set.
    n : int, set size.
    criterion : "a" (expected face-vertex error, the default) or "d" (log det of the information).

    Returns
    -------
    picks : (n,) int64; trace : list of the mean tr(H P) (mm^2) after the seeds and after each pick.
    """
    jacobians = np.asarray(jacobians, dtype=np.float64)
    nf, nc = jacobians.shape[:2]
    seeds = [int(s) for s in seeds]
    if criterion not in ("a", "d"):
        raise ValueError(f"criterion must be 'a' or 'd', got {criterion!r}")
    if not len(seeds) <= n <= nc or len(set(seeds)) != len(seeds):
        raise ValueError(f"need distinct seeds ({len(seeds)}) <= n ({n}) <= candidates ({nc})")
    mirror = np.asarray(mirror, dtype=np.int64)
    positions = np.asarray(positions, dtype=np.float64)
    faces = [_FaceState(jacobians[f] / np.asarray(sigmas[f], dtype=np.float64)[:, None, None],
                        np.asarray(hessians[f], dtype=np.float64), np.asarray(prior[f], dtype=np.float64), seeds)
             for f in range(nf)]
    picks = list(seeds)
    free = np.ones(nc, dtype=bool)
    near = np.full(nc, np.inf)

    def take(c):
        picks.append(int(c))
        for st in faces:
            st.add(c)

    def block(c):
        free[c] = False
        np.minimum(near, np.linalg.norm(positions - positions[c], axis=1), out=near)

    for s in seeds:
        block(s)
    trace = [float(np.mean([st.trace for st in faces]))]
    idx = np.arange(nc)
    paired = (mirror >= 0) & (mirror != idx)
    midline = mirror == idx
    twin = np.maximum(mirror, 0)
    pair_sep = np.linalg.norm(positions - positions[twin], axis=1)
    while len(picks) < n:
        left = n - len(picks)
        ok = free & (near >= min_separation)
        g = np.mean([st.gains(criterion) for st in faces], axis=0)
        pair_ok = ok & paired & ok[twin] & (pair_sep >= min_separation) & (left >= 2)
        value = np.where(pair_ok, 0.5 * (g + g[twin]), -np.inf)
        value = np.where(ok & midline, np.maximum(value, g), value)
        if not np.isfinite(value).any():
            raise RuntimeError(f"greedy_select: no eligible candidate left with {left} slots to fill "
                               f"(min separation {min_separation} mm)")
        c = int(np.argmax(value))
        take(c)
        block(c)
        if pair_ok[c]:
            take(mirror[c])
            block(mirror[c])
        trace.append(float(np.mean([st.trace for st in faces])))
        if verbose and len(trace) % 20 == 0:
            print(f"  {len(picks)} points: mean tr(H P) {trace[-1]:.4f} mm^2", file=sys.stderr)
    return np.array(picks, dtype=np.int64), trace


def design_problem(model, candidates, n_faces=N_FACES, seed=SEED):
    """(jacobians (F, C, 2, p), sigmas (F, C), hessians (F, p, p), priors (F, p)) for vertex ids ``candidates``."""
    jac, sig, hes, pri = [], [], [], []
    for params, cam in design_faces(model, n_faces, seed):
        jac.append(pixel_jacobian(model, params, cam, candidates))
        sig.append(landmark_sigma(model, params, cam, candidates))
        hes.append(metric_hessian(model, params))
        pri.append(prior_precision(model, params.expression))
    return np.array(jac), np.array(sig), np.array(hes), np.array(pri)


# ------------------------------------------------------------------------------------------------
# the ICT set
# ------------------------------------------------------------------------------------------------

def candidate_pool(model, groups=None, pool_size=POOL_SIZE):
    """Vertex ids (C,) of the candidate pool and a dict vertex id -> group (see the module docstring)."""
    from make_landmark_sets import _sym_fps, candidate_groups
    groups = candidate_groups(model) if groups is None else groups
    v = model.vertices.astype(np.float64)
    allc = np.unique(np.concatenate([groups[g] for g in POOL_GROUPS]))
    pool = np.sort(_sym_fps(v, allc, min(pool_size, allc.size)))
    where = {int(i): g for g in POOL_GROUPS for i in groups[g]}
    return pool, where


def build_set(model, ibug, n=N_POINTS, n_faces=N_FACES, criterion="a", verbose=False):
    """The new set: (vertex ids (n,), {group: count}, trace list)."""
    from make_landmark_sets import IRIS_R, _mirror_ids, _mirror_into, candidate_groups
    groups = candidate_groups(model)
    pool, where = candidate_pool(model, groups)
    v = model.vertices.astype(np.float64)
    iris_l = groups["iris_L"][:IRIS_POINTS]
    iris = np.concatenate([iris_l, _mirror_ids(v, iris_l, np.arange(IRIS_R[0], IRIS_R[1] + 1))])
    seed_ids = np.concatenate([np.asarray(ibug if SEED_IBUG68 else [], dtype=np.int64), iris])
    cand = np.concatenate([seed_ids, np.setdiff1d(pool, seed_ids)])
    mirror_v = _mirror_into(v, cand, cand)
    pos = {int(c): k for k, c in enumerate(cand)}
    mirror = np.array([pos[int(m)] if m >= 0 else -1 for m in mirror_v])
    consistent = (mirror >= 0) & (mirror[np.maximum(mirror, 0)] == np.arange(cand.size))
    mirror[~consistent] = -1
    if verbose:
        print(f"{cand.size} candidates ({seed_ids.size} seeds), {n_faces} design faces", file=sys.stderr)
    jac, sig, hes, prior = design_problem(model, cand, n_faces)
    picks, trace = greedy_select(jac, sig, hes, prior, v[cand], mirror, range(seed_ids.size), n,
                                 criterion=criterion, verbose=verbose)
    ids = cand[picks]
    for i in iris:
        where[int(i)] = "iris"
    counts = {}
    for i in ids:
        g = where.get(int(i), "other")
        g = g[:-2] if g[-2:] in ("_L", "_R") else g
        counts[g] = counts.get(g, 0) + 1
    return ids, counts, trace


def format_set(name, ids, counts, trace, criterion):
    lines = [f"# lmfit3d landmark set {name}: {len(ids)} ICT-FaceKit vertex ids (0-based), one per line.",
             "# Made by tools/select_landmarks.py: greedy Bayesian design for single-image reconstruction",
             f"# (criterion {criterion}: {'expected face-vertex error' if criterion == 'a' else 'log det'}; "
             f"{N_FACES} design faces, yaw +-{YAW_DEG:g} deg),",
             "# seeded with ibug68 and the iris points; see the tool's docstring.  File order: ibug68, iris L,",
             "# iris R, then the greedy picks.  Points per group: "
             + ", ".join(f"{g} {c}" for g, c in sorted(counts.items())) + ".",
             f"# Design rms face-vertex error (linearised): {np.sqrt(trace[0]):.3f} mm after the seeds, "
             f"{np.sqrt(trace[-1]):.3f} mm at {len(ids)} points."]
    return "\n".join(lines + [str(int(i)) for i in ids]) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--check", action="store_true", help="compare with the committed file; exit 1 if it differs")
    ap.add_argument("--out-dir", type=Path, default=OUT_DIR, help="output folder (default: data/landmarks)")
    ap.add_argument("--name", default=NAME, help=f"set name (default {NAME})")
    ap.add_argument("--n", type=int, default=N_POINTS, help=f"set size (default {N_POINTS})")
    ap.add_argument("--faces", type=int, default=N_FACES, help=f"design faces (default {N_FACES})")
    ap.add_argument("--criterion", choices=("a", "d"), default="a",
                    help="a: expected face-vertex error (default); d: log det of the information")
    ap.add_argument("--ict", type=Path, default=None, help="ICT-FaceKit root (default: $ICT_FACEKIT)")
    ap.add_argument("--verbose", action="store_true")
    a = ap.parse_args(argv)
    if a.n < 80 or a.faces < 1:
        ap.error("--n must be >= 80 (the seeds: ibug68 and 12 iris points) and --faces >= 1")
    from make_landmark_sets import load_inputs
    from lmfit3d.paths import atomic_write
    loaded = load_inputs(a.ict)
    if loaded is None:
        return 2
    model, ibug = loaded
    ids, counts, trace = build_set(model, ibug, a.n, a.faces, a.criterion, a.verbose)
    text = format_set(a.name, ids, counts, trace, a.criterion)
    path = a.out_dir / f"{a.name}.txt"
    if a.check:
        if not path.is_file() or path.read_text() != text:
            print(f"out of date (run python tools/select_landmarks.py): {path}", file=sys.stderr)
            return 1
        print(f"{path} is up to date")
        return 0
    a.out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_write(path, "w") as fh:
        fh.write(text)
    print(f"wrote {path} ({len(ids)} vertices; " + ", ".join(f"{g} {c}" for g, c in sorted(counts.items())) + ")")
    return 0


if __name__ == "__main__":
    sys.exit(main())
