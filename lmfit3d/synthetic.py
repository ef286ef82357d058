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


# Expression groups of ``strong_expression`` (ARKit names; a group is drawn as a whole).
EXPRESSION_GROUPS = {
    "talk": ("jawOpen", "mouthFunnel", "mouthPucker", "mouthClose", "mouthLowerDown_L", "mouthLowerDown_R",
             "mouthUpperUp_L", "mouthUpperUp_R", "mouthStretch_L", "mouthStretch_R", "mouthRollLower",
             "mouthRollUpper", "mouthShrugLower", "mouthShrugUpper", "mouthPress_L", "mouthPress_R"),
    "blink": ("eyeBlink_L", "eyeBlink_R", "eyeSquint_L", "eyeSquint_R", "eyeWide_L", "eyeWide_R"),
    "smile": ("mouthSmile_L", "mouthSmile_R", "cheekSquint_L", "cheekSquint_R", "mouthDimple_L",
              "mouthDimple_R", "mouthFrown_L", "mouthFrown_R"),
    "brows": ("browInnerUp_L", "browInnerUp_R", "browOuterUp_L", "browOuterUp_R", "browDown_L",
              "browDown_R", "noseSneer_L", "noseSneer_R"),
    "cheeks": ("cheekPuff_L", "cheekPuff_R", "jawLeft", "jawRight", "jawForward", "mouthLeft", "mouthRight"),
}


def strong_expression(model, rng, max_groups=3):
    """A strong random expression psi (E,) in [0, 1]: 1-``max_groups`` groups of
    :data:`EXPRESSION_GROUPS`, in each 1-3 shapes at U(0.3, 1) (a symmetric pair when both sides are
    drawn keeps one weight +- 0.15); ``jawOpen`` at U(0.2, 1) in half of the talking draws."""
    names = list(model.expression_names)
    psi = np.zeros(model.n_expression)
    groups = rng.choice(list(EXPRESSION_GROUPS), size=rng.integers(1, max_groups + 1), replace=False)
    for g in groups:
        shapes = [n for n in EXPRESSION_GROUPS[g] if n in names]
        for n in rng.choice(shapes, size=min(len(shapes), rng.integers(1, 4)), replace=False):
            w = rng.uniform(0.3, 1.0)
            psi[names.index(n)] = w
            twin = n[:-1] + ("R" if n.endswith("_L") else "L") if n[-2:] in ("_L", "_R") else None
            if twin in names and rng.random() < 0.7:
                psi[names.index(twin)] = np.clip(w + rng.uniform(-0.15, 0.15), 0.0, 1.0)
        if g == "talk" and "jawOpen" in names and rng.random() < 0.5:
            psi[names.index("jawOpen")] = rng.uniform(0.2, 1.0)
    return psi


def render_random_face(model, rng, expressive=True, image_px=512, face_px=260.0, yaw_deg=30.0,
                       pitch_deg=15.0, roll_deg=10.0, identity_scale=0.8, expression=None):
    """Render a random face: identity from the prior (x ``identity_scale``), 1-3 expression shapes
    at 0.1-0.7 (when ``expressive``; ``expression`` (E,) given: that one), random head pose and gaze,
    focal (20-50 degree FOV), skin tone, light and grey background; the head fills about ``face_px``
    pixels."""
    beta = rng.normal(size=model.n_identity) * identity_scale
    psi = np.zeros(model.n_expression)
    if expression is not None:
        psi = np.asarray(expression, dtype=np.float64)
        if psi.shape != (model.n_expression,):
            raise ValueError(f"expression must have shape ({model.n_expression},), got {psi.shape}")
    elif expressive:
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
    look = random_look(model, rng, beta, image_px)
    return render_face(model, p, cam, look)


@dataclass(frozen=True)
class Look:
    """What a render looks like besides the geometry: per-vertex albedo, light direction, background."""
    albedo: np.ndarray        # (V, 3) in [0, 1]
    light: np.ndarray         # (3,) direction towards the light (camera axes)
    background: np.ndarray    # (H, W, 3) uint8


def random_look(model, rng, identity, image_px):
    """A random skin tone (light to dark) with darker brows and reddish lips
    (:func:`paint_brows_and_lips`), light direction and grey background."""
    from .render import model_albedo
    skin = np.clip(np.array([0.85, 0.62, 0.52]) * rng.uniform(0.45, 1.1) + rng.uniform(-0.05, 0.05, 3), 0.05, 1)
    light = np.array([rng.uniform(-0.6, 0.6), rng.uniform(-0.2, 0.8), 1.0])
    bg = np.full((image_px, image_px, 3), int(rng.integers(30, 200)), np.uint8)
    alb = model_albedo(model, skin=skin, identity=identity)
    paint_brows_and_lips(model, alb, identity, brow=rng.uniform(0.25, 0.5), lip=rng.uniform(0.75, 0.95))
    return Look(alb, light, bg)


def _inside(poly, pts):
    """Points (N, 2) inside the closed polygon (K, 2) (even-odd rule)."""
    inside = np.zeros(len(pts), bool)
    for a, b in zip(poly, np.roll(poly, -1, axis=0)):
        cross = (a[1] > pts[:, 1]) != (b[1] > pts[:, 1])
        x = a[0] + (pts[:, 1] - a[1]) * (b[0] - a[0]) / np.where(b[1] == a[1], 1e-12, b[1] - a[1])
        inside ^= cross & (pts[:, 0] < x)
    return inside


def paint_brows_and_lips(model, albedo, identity=None, brow=0.35, lip=0.85, brow_mm=3.5):
    """Darken the brows and redden the lips of a per-vertex albedo (V, 3) in place.

    Brows: face vertices within ``brow_mm`` (frontal x-y distance) of the iBUG brow polylines
    (points 17-21, 22-26), in front of the eyes; they get ``brow`` x their colour.  Lips: face
    vertices inside the outer lip contour (iBUG 48-59, frontal x-y), in front of the mouth corners;
    they get (1, 0.72, 0.75) x ``lip`` x their colour.  So MediaPipe sees brows and lips on renders
    as on real faces (correspondence learning, the dynamics benchmark).
    """
    from .landmarks import load_landmark_set
    ib = load_landmark_set("ibug68")
    t = model.template(identity)
    face = model.region_mask("face")
    for a, b in ((17, 22), (22, 27)):
        line = t[ib[a:b]]
        front = face & (t[:, 2] > line[:, 2].min() - 6.0)
        d = np.full(len(t), np.inf)
        for p, q in zip(line[:-1, :2], line[1:, :2]):
            u = np.clip(((t[:, :2] - p) @ (q - p)) / max(float((q - p) @ (q - p)), 1e-12), 0.0, 1.0)
            d = np.minimum(d, np.linalg.norm(t[:, :2] - (p + u[:, None] * (q - p)), axis=1))
        albedo[front & (d < brow_mm)] *= brow
    outer = t[ib[48:60]]
    lips = face & (t[:, 2] > outer[:, 2].min() - 3.0) & _inside(outer[:, :2], t[:, :2])
    albedo[lips] *= np.array([1.0, 0.72, 0.75]) * lip


def render_face(model, params, camera, look):
    """Render ``params`` (camera-space pose) through ``camera`` with ``look``: a :class:`RenderedFace`."""
    from .render import render, shade, visible_faces
    verts = evaluate_mesh(model, params)
    faces = visible_faces(model)
    img, tri, bary = render(verts, faces, shade(verts, faces, look.albedo, look.light), camera.focal,
                            camera.width, camera.height, background=look.background)
    return RenderedFace(img, params, camera, verts, tri, bary, faces)


# --------------------------------------------------------------------------------------------
# Multi-view sequences (offline capture)
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class MultiView:
    """A synthetic multi-camera sequence (world = camera 0's frame).

    Attributes
    ----------
    mu : (C, F, L, 2) noisy landmarks (pixels); sigma : (C, F, L) their true sigma; clean : noiseless.
    rotation, translation : (C, 3, 3), (C, 3) world-to-camera (x_cam = R x + T, mm).
    focal : (C,) pixels; image_size : (C, 2).
    params : list of F Params (world pose); identity shared.
    occluded : (C, F, L) bool, landmark faces away from the camera (large sigma and noise).
    """
    mu: np.ndarray
    sigma: np.ndarray
    clean: np.ndarray
    rotation: np.ndarray
    translation: np.ndarray
    focal: np.ndarray
    image_size: np.ndarray
    params: list
    occluded: np.ndarray

    def vertices(self, model, f):
        """Ground-truth world mesh (V, 3) mm of frame f."""
        return evaluate_mesh(model, self.params[f])

    def calibration_json(self):
        """The true calibration in the ``lmfit3d.capture.read_calibration`` format."""
        return {"convention": "opengl", "units": "mm",
                "cameras": [{"R": self.rotation[j].tolist(), "t": self.translation[j].tolist(),
                             "focal": float(self.focal[j]), "image_size": self.image_size[j].tolist()}
                            for j in range(self.focal.size)]}


def ring_cameras(n_cameras, centre, yaw_span_deg=160.0, pitch_deg=(0.0, 20.0, -15.0)):
    """Cameras around a head centre (mm, world = camera 0): camera 0 frontal, the others spread in yaw.

    Camera j sees the world rotated about ``centre`` by Q_j (yaw, then a pitch from the cycle
    ``pitch_deg``): x_cam = Q_j (x - c) + c, i.e. R_j = Q_j, T_j = c - Q_j c.
    """
    from .rotation import rodrigues
    c = np.asarray(centre, dtype=np.float64)
    yaws = [0.0]
    k = 1
    while len(yaws) < n_cameras:                    # +-step, +-2 step, ... up to half the span
        step = 0.5 * yaw_span_deg / max((n_cameras - 1 + 1) // 2, 1)
        yaws += [k * step, -k * step]
        k += 1
    yaws = yaws[:n_cameras]
    rot = np.empty((n_cameras, 3, 3))
    tr = np.empty((n_cameras, 3))
    for j, yaw in enumerate(yaws):
        pitch = pitch_deg[j % len(pitch_deg)] if j else 0.0
        q = rodrigues(np.radians([pitch, 0.0, 0.0])) @ rodrigues(np.radians([0.0, yaw, 0.0]))
        rot[j] = q
        tr[j] = c - q @ c
    return rot, tr


def make_multiview(model, vertex_ids, rng, n_cameras=4, n_frames=10, noise_px=1.0, face_px=256.0,
                   image_px=512, fov_deg=30.0, outlier_fraction=0.05, outlier_sigma_px=15.0,
                   occluded_sigma_px=15.0, identity=None, expression_amplitude=0.6, period_frames=50,
                   yaw_span_deg=160.0, pitch_deg=(0.0, 20.0, -15.0)):
    """C cameras around a head, F frames of expression animation and head motion.

    One identity (from the prior unless given); the root rotates slowly (+-4 degrees pitch, +-8
    degrees yaw) and four expression shapes animate smoothly, with a period of ``period_frames``
    frames (consecutive video frames: small motion from frame to frame).  Landmarks whose vertex normal faces away from a
    camera are "occluded": sigma = ``occluded_sigma_px`` and noise of that size (what a landmark
    predictor reports there); a further ``outlier_fraction`` of landmarks get ``outlier_sigma_px``.
    The others get ``noise_px``.  Cameras: ``ring_cameras`` (``yaw_span_deg``, ``pitch_deg``) at the
    depth framing the face at ``face_px``.
    """
    from .skinning import evaluate_points
    ids = np.asarray(vertex_ids, dtype=np.int64)
    cam = Camera.from_fov(image_px, image_px, fov_deg)
    depth = cam.focal * FACE_WIDTH_MM / face_px
    centre = np.array([0.0, 0.0, -depth])
    rot, tr = ring_cameras(n_cameras, centre, yaw_span_deg, pitch_deg)
    base = random_params(model, rng, yaw_deg=5.0, pitch_deg=5.0, roll_deg=3.0, identity=identity)
    shapes = rng.choice(model.n_expression, size=4, replace=False)
    phase = rng.uniform(0, 2 * np.pi, size=4)
    # normals of the neutral template at the landmarks, carried by the root rotation (visibility)
    t0 = model.template(base.identity)
    from .render import vertex_normals
    nrm0 = np.empty_like(t0)
    vertex_normals(np.ascontiguousarray(t0, dtype=np.float64), np.ascontiguousarray(model.faces, dtype=np.int64), nrm0)
    nrm0 = nrm0[ids]
    from .rotation import rodrigues
    params, mus, sig, clean, occ = [], [], [], [], []
    for f in range(n_frames):
        s = f / period_frames
        rots = base.rotations.copy()
        rots[0] = base.rotations[0] + np.radians([4.0 * np.sin(2 * np.pi * s), 8.0 * np.sin(np.pi * s), 0.0])
        psi = base.expression.copy() * 0.3
        psi[shapes] = expression_amplitude * 0.5 * (1 - np.cos(2 * np.pi * s + phase))
        p = base.replace(rotations=rots, expression=np.clip(psi, 0, 1), translation=centre.copy())
        params.append(p)
        x, _ = evaluate_points(model, p, ids)
        nrm = nrm0 @ rodrigues(rots[0]).T
        uv_c, sg_c, cl_c, oc_c = [], [], [], []
        for j in range(n_cameras):
            xc = x @ rot[j].T + tr[j]
            nc = nrm @ rot[j].T
            oc = (nc * (-xc)).sum(1) <= 0.0           # faces away from the camera centre
            uv = cam.project(xc)
            sg = np.full(ids.size, float(noise_px))
            sg[rng.random(ids.size) < outlier_fraction] = outlier_sigma_px
            sg[oc] = occluded_sigma_px
            uv_c.append(uv + rng.normal(size=uv.shape) * sg[:, None])
            sg_c.append(sg)
            cl_c.append(uv)
            oc_c.append(oc)
        mus.append(uv_c)
        sig.append(sg_c)
        clean.append(cl_c)
        occ.append(oc_c)
    tr_ = lambda a: np.ascontiguousarray(np.swapaxes(np.asarray(a), 0, 1))  # noqa: E731
    return MultiView(tr_(mus), tr_(sig), tr_(clean), rot, tr, np.full(n_cameras, cam.focal),
                     np.tile([float(image_px), float(image_px)], (n_cameras, 1)), params, tr_(occ))


# --------------------------------------------------------------------------------------------
# Several heads in one video (multi-face tracking)
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class MultiFaceClip:
    """A rendered clip of several heads with known identities.

    frames : list of (H, W, 3) uint8; identities : (N, K) each head's identity;
    centres : (F, N, 2) pixels, each head's projected model origin (NaN: not in the frame);
    cut : first frame of the second shot; camera : the one camera (focal in pixels).
    """
    frames: list
    identities: np.ndarray
    centres: np.ndarray
    cut: int
    camera: Camera


def multi_face_clip(model, rng, n_heads=2, shot=10, size=(400, 240), face_px=95.0, leave=3, only=None,
                    face_px2=None):
    """Two shots of ``shot`` frames: the heads side by side (random identities, skin tones, slow
    turns), the last head leaving the frame on the last ``leave`` frames of shot 1; then a cut (the
    background changes) to shot 2, where the heads' places are reversed (head 0 takes the last
    head's place ...) and every head is back.  Head k is rendered over heads < k.  ``only``: render
    that head alone (the same draws: the single-face baseline of head ``only``).  ``face_px2``: the
    heads' size in shot 2 (default ``face_px``; a zoom at the cut)."""
    w, h = size
    cam = Camera.from_fov(w, h, 40.0)
    depths = [cam.focal * FACE_WIDTH_MM / px for px in (face_px, face_px2 or face_px)]
    ids = rng.normal(size=(n_heads, model.n_identity))
    looks = [random_look(model, rng, ids[k], 1) for k in range(n_heads)]
    places = (np.arange(n_heads) + 0.5) / n_heads * w
    grey = rng.choice(np.arange(40, 200, 20), size=2, replace=False)
    frames, centres = [], np.full((2 * shot, n_heads, 2), np.nan)
    phase = rng.uniform(0, 2 * np.pi, n_heads)
    for f in range(2 * shot):
        second = f >= shot
        depth = depths[int(second)]
        img = np.full((h, w, 3), int(grey[int(second)]), np.uint8)
        for k in range(n_heads):
            if only is not None and k != only:
                continue
            u = places[n_heads - 1 - k] if second else places[k]
            if not second and k == n_heads - 1 and f >= shot - leave:
                continue                                    # the last head has left the frame
            u = u + 6.0 * np.sin(0.4 * f + phase[k])
            x = (u - w / 2) * depth / cam.focal
            rot = np.zeros((model.n_joints, 3))
            rot[0] = [0.05 * np.sin(0.3 * f + phase[k]), 0.25 * np.sin(0.25 * f + phase[k]), 0.0]
            p = Params(ids[k], np.zeros(model.n_expression), rot, np.array([x, 0.0, -depth]))
            look = Look(looks[k].albedo, looks[k].light, img)
            img = render_face(model, p, cam, look).image
            centres[f, k] = cam.project(p.translation[None])[0]
        frames.append(img)
    return MultiFaceClip(frames, ids, centres, shot, cam)


@dataclass(frozen=True)
class SideBySideClip:
    """Two real clips composited side by side.

    frames : list of (H, 2 H, 3) uint8; centres : (F, 2, 2) pixels, the centre of the half each
    person (clip 0, clip 1) is in on each frame; cut : the first frame after the cut (``len(frames)``
    when there is none); swap : whether the two persons change sides at the cut (there is a cut).
    """
    frames: list
    centres: np.ndarray
    cut: int
    swap: bool


def square_crop(img, cx, half, scale=1.0):
    """The square of ``img``'s height (H, W, 3 uint8; H <= W) centred on column ``cx`` (pixels; None:
    the middle; the square kept inside), resized to ``half`` pixels (a box filter by the integer
    factor, then nearest; ``scale`` < 1: shrunk to ``scale * half`` and centred on its border's
    median colour).  Returns (half, half, 3) uint8."""
    cx = img.shape[1] / 2 if cx is None else cx
    h, w = img.shape[:2]
    x0 = int(np.clip(round(cx - h / 2), 0, max(w - h, 0)))
    sq = img[:, x0:x0 + h]
    side = max(int(round(half * scale)), 1)
    k = max(sq.shape[0] // side, 1)                     # box filter by the integer factor, then nearest
    n = sq.shape[0] // k * k
    box = sq[:n, :n].reshape(n // k, k, n // k, k, 3).mean((1, 3))
    idx = np.minimum((np.arange(side) + 0.5) * box.shape[0] / side, box.shape[0] - 1).astype(int)
    small = box[idx][:, idx]
    if side == half:
        return small.astype(np.uint8)
    edge = np.concatenate([small[0], small[-1], small[:, 0], small[:, -1]])
    out = np.empty((half, half, 3))
    out[:] = np.median(edge, 0)
    o = (half - side) // 2
    out[o:o + side, o:o + side] = small
    return out.astype(np.uint8)


def side_by_side(clips, shot, half=540, centres_x=(None, None), swap=True, scales=(1.0, 1.0)):
    """Two real one-person clips side by side: clip 0 on the left, clip 1 on the right for ``shot``
    frames, then (``swap``) a hard cut after which their sides are exchanged, for ``shot`` frames
    more (without ``swap``: one shot of ``2 * shot`` frames, no cut).

    clips : two lists of (H, W, 3) uint8 frames (H <= W), each played forwards and backwards again
    when shorter than ``2 * shot``; centres_x : each clip's face column (pixels; None: the middle),
    the centre of its square crop of the frame's height; half : each half's side in pixels;
    scales : each person's size in its half (1: the whole crop; < 1 shrunk, on its border's colour).
    Frame f of the result shows frame f of each clip (time runs on through the cut).
    """
    if len(clips) != 2 or not all(len(c) for c in clips):
        raise ValueError("side_by_side needs two non-empty clips")
    n = 2 * shot
    seqs = []
    for c in clips:
        idx = list(range(len(c)))
        while len(idx) < n:
            idx += idx[::-1][:n - len(idx)]
        seqs.append(idx[:n])
    frames, centres = [], np.empty((n, 2, 2))
    for f in range(n):
        halves = [square_crop(clips[k][seqs[k][f]], centres_x[k], half, scales[k]) for k in range(2)]
        flip = swap and f >= shot
        frames.append(np.concatenate(halves[::-1] if flip else halves, 1))
        left = 1 if flip else 0
        centres[f, left] = (half / 2, half / 2)
        centres[f, 1 - left] = (1.5 * half, half / 2)
    return SideBySideClip(frames, centres, shot if swap else n, bool(swap))
