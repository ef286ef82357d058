"""Synthetic landmark data from the model's priors (tests, benchmarks, accuracy tables).

A face is drawn with identity beta ~ N(0, I) * ``identity_scale``, a sparse expression (a few shapes
active, weights ~ U(0, 1)), a random head pose (yaw, pitch, roll within the given ranges) and small
neck/head/eye rotations, placed so that the face spans ``face_px`` pixels in a square image.
Landmarks are projected, then Gaussian noise with a known per-landmark sigma is added; an
``outlier_fraction`` of landmarks get a large sigma *and* noise of that size (what a good predictor
does on occluded points).
"""
from dataclasses import dataclass

import numpy as np

from .camera import Camera
from .model import Params
from .skinning import evaluate_mesh

FACE_WIDTH_MM = 150.0


@dataclass(frozen=True)
class SyntheticFrame:
    params: Params
    camera: Camera
    vertices: np.ndarray      # (V, 3) camera-space mesh, mm
    mu: np.ndarray            # (L, 2) noisy landmarks, pixels
    sigma: np.ndarray         # (L,) true noise sigma, pixels
    clean: np.ndarray         # (L, 2) noiseless projections


def random_params(model, rng, identity_scale=1.0, n_active=4, yaw_deg=30.0, pitch_deg=15.0,
                  roll_deg=10.0, identity=None):
    """Random Params from the priors (translation left at zero)."""
    beta = rng.normal(size=model.n_identity) * identity_scale if identity is None else np.asarray(identity)
    psi = np.zeros(model.n_expression)
    act = rng.choice(model.n_expression, size=n_active, replace=False)
    psi[act] = rng.uniform(0.0, 1.0, size=n_active)
    rot = np.zeros((model.n_joints, 3))
    rot[0] = np.radians([rng.uniform(-pitch_deg, pitch_deg), rng.uniform(-yaw_deg, yaw_deg),
                         rng.uniform(-roll_deg, roll_deg)])
    rot[1:3] = rng.normal(scale=0.03, size=(2, 3))
    rot[3:5] = rng.normal(scale=0.1, size=(2, 3)) * np.array([1.0, 1.0, 0.0])
    return Params(beta, psi, rot, np.zeros(3))


def make_frame(model, params, vertex_ids, rng, noise_px=1.0, face_px=256.0, image_px=512,
               fov_deg=30.0, outlier_fraction=0.0, outlier_sigma_px=15.0, depth_mm=None):
    """Project ``params`` through a camera that frames the face at ``face_px`` pixels and add noise.

    The translation is set so the head sits on the optical axis at the depth giving ``face_px``.
    """
    cam = Camera.from_fov(image_px, image_px, fov_deg)
    depth = depth_mm if depth_mm is not None else cam.focal * FACE_WIDTH_MM / face_px
    p = params.replace(translation=np.array([0.0, 0.0, -depth]))
    verts = evaluate_mesh(model, p)
    ids = np.asarray(vertex_ids)
    clean = cam.project(verts[ids])
    sigma = np.full(ids.size, float(noise_px))
    if outlier_fraction > 0:
        out = rng.random(ids.size) < outlier_fraction
        sigma[out] = outlier_sigma_px
    mu = clean + rng.normal(size=clean.shape) * sigma[:, None]
    return SyntheticFrame(p, cam, verts, mu, sigma, clean)


def rigid_align_error(pred, gt, mask):
    """Per-vertex error (mm) on ``mask`` after the best rigid (Kabsch) alignment of pred onto gt."""
    a, b = pred[mask], gt[mask]
    ca, cb = a.mean(0), b.mean(0)
    u, _, vt = np.linalg.svd((a - ca).T @ (b - cb))
    d = np.sign(np.linalg.det(u @ vt))
    r = (u @ np.diag([1.0, 1.0, d]) @ vt).T
    return np.linalg.norm((a - ca) @ r.T + cb - b, axis=1)


@dataclass(frozen=True)
class RenderedFace:
    """A rendered synthetic face with its ground truth (see :func:`render_random_face`)."""
    image: np.ndarray         # (H, W, 3) uint8
    params: Params
    camera: Camera
    vertices: np.ndarray      # (V, 3) camera-space mesh, mm
    tri_id: np.ndarray        # (H, W) visible triangle per pixel (-1 background)
    bary: np.ndarray          # (H, W, 3) barycentrics
    faces: np.ndarray         # (T, 3) the drawn triangles


def render_random_face(model, rng, expressive=True, image_px=512, face_px=260.0, yaw_deg=30.0,
                       pitch_deg=15.0, roll_deg=10.0, identity_scale=0.8):
    """Render a random face: identity from the prior (x ``identity_scale``), 1-3 expression shapes
    at 0.1-0.7 (when ``expressive``), random head pose and gaze, focal (20-50 degree FOV), skin tone,
    light and grey background; the head fills about ``face_px`` pixels."""
    from .render import model_albedo, render, shade, visible_faces
    beta = rng.normal(size=model.n_identity) * identity_scale
    psi = np.zeros(model.n_expression)
    if expressive:
        act = rng.choice(model.n_expression, size=rng.integers(1, 4), replace=False)
        psi[act] = rng.uniform(0.1, 0.7, size=act.size)
    rot = np.zeros((model.n_joints, 3))
    rot[0] = np.radians([rng.uniform(-pitch_deg, pitch_deg), rng.uniform(-yaw_deg, yaw_deg),
                         rng.uniform(-roll_deg, roll_deg)])
    rot[3:5] = rng.normal(scale=0.08, size=(2, 3)) * np.array([1.0, 1.0, 0.0])
    cam = Camera.from_fov(image_px, image_px, rng.uniform(20, 50))
    depth = cam.focal * FACE_WIDTH_MM / face_px
    shift = rng.uniform(-0.1, 0.1, size=2) * depth
    p = Params(beta, psi, rot, np.array([shift[0], shift[1], -depth]))
    skin = np.clip(np.array([0.85, 0.62, 0.52]) * rng.uniform(0.45, 1.1) + rng.uniform(-0.05, 0.05, 3), 0.05, 1)
    light = np.array([rng.uniform(-0.6, 0.6), rng.uniform(-0.2, 0.8), 1.0])
    bg = np.full((image_px, image_px, 3), int(rng.integers(30, 200)), np.uint8)
    verts = evaluate_mesh(model, p)
    faces = visible_faces(model)
    alb = model_albedo(model, skin=skin, identity=beta)
    img, tri, bary = render(verts, faces, shade(verts, faces, alb, light), cam.focal, image_px, image_px,
                            background=bg)
    return RenderedFace(img, p, cam, verts, tri, bary, faces)
