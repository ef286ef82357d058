"""The offline solver's change of variables (lmfit3d.capture_precond) on a quadratic with the capture's
block structure: frames (pose + expression) coupled to global parameters."""
import numpy as np

from lmfit3d.capture_precond import block_map, schur_map

F, M, E, G = 5, 4, 2, 3           # frames, pose size, expression size, globals


def _problem(rng):
    n = F * (M + E) + G
    jac = np.zeros((300, n))
    for r in range(300):             # each residual sees one frame and the globals
        f = r % F
        cols = np.r_[np.arange(f * (M + E), (f + 1) * (M + E)), np.arange(F * (M + E), n)]
        jac[r, cols] = rng.normal(size=cols.size)
    return jac.T @ jac + 0.1 * np.eye(n)


def _pose_map(h):
    """(starts, pose blocks, block_map) of the quadratic h: every frame's pose block whitened."""
    n = h.shape[0]
    starts = np.arange(F) * (M + E)
    blocks = np.stack([h[s:s + M, s:s + M] for s in starts])
    return starts, blocks, block_map(np.zeros(n), np.ones(n, bool), np.diag(h).copy(), starts, blocks, M)


def test_schur_map_whitens_the_globals_and_decouples_them_from_the_poses(rng):
    h = _problem(rng)
    n = h.shape[0]
    starts, blocks, vm0 = _pose_map(h)
    vm = schur_map(vm0, np.arange(F * (M + E), n), lambda z: h @ z, blocks)
    p = np.stack([vm.to_z(e) for e in np.eye(n)], 1)
    w = p.T @ h @ p
    glob = np.arange(F * (M + E), n)
    pose = (starts[:, None] + np.arange(M)).ravel()
    np.testing.assert_allclose(w[np.ix_(glob, glob)], np.eye(G), atol=1e-6)
    np.testing.assert_allclose(w[np.ix_(glob, pose)], 0.0, atol=1e-6)       # poses eliminated
    for s in starts:                                                          # pose blocks whitened
        np.testing.assert_allclose(w[s:s + M, s:s + M], np.eye(M), atol=1e-6)
    u = rng.normal(size=n)
    np.testing.assert_allclose(vm.gradient(h @ vm.to_z(u)), w @ u, rtol=1e-9, atol=1e-9)   # P^T grad


def test_camera_block_map_whitens_each_camera_block(rng):
    """camera_block_map: each camera's own block of P^T H P is the identity; the poses keep theirs."""
    from lmfit3d.capture_precond import camera_block_map
    h = _problem(rng)
    n = h.shape[0]
    starts, _, vm0 = _pose_map(h)
    cams = [np.array([F * (M + E)]), np.arange(F * (M + E) + 1, n)]        # two "cameras" of 1 and 2
    vm = camera_block_map(vm0, cams, [h[np.ix_(c, c)] for c in cams])
    p = np.stack([vm.to_z(e) for e in np.eye(n)], 1)
    w = p.T @ h @ p
    for c in cams:
        np.testing.assert_allclose(w[np.ix_(c, c)], np.eye(c.size), atol=1e-6)
    for s in starts:
        np.testing.assert_allclose(w[s:s + M, s:s + M], np.eye(M), atol=1e-6)
    u = rng.normal(size=n)
    np.testing.assert_allclose(vm.gradient(h @ vm.to_z(u)), w @ u, rtol=1e-9, atol=1e-9)
