"""Write a synthetic landmark file for ``lmfit3d fit-landmarks`` (the demo / main-job input).

A random face from the model's priors turns its head over F frames while its expression changes;
dense landmarks are projected into a 1280x720 image and perturbed with per-landmark Gaussian noise
of known sigma.  The ground-truth meshes are stored beside the landmarks (``gt_vertices``) so the
fit can be scored.

Usage::

    python tools/make_synthetic_landmarks.py OUT.npz [--frames 30] [--set dense320] [--noise 1.0]
"""
import argparse
import sys

import numpy as np

from lmfit3d.landmarks import load_landmark_set
from lmfit3d.model import load_model
from lmfit3d.paths import atomic_write
from lmfit3d.synthetic import make_frame, random_params


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out")
    ap.add_argument("--frames", type=int, default=30)
    ap.add_argument("--set", default="dense320")
    ap.add_argument("--noise", type=float, default=1.0, help="landmark noise sigma, pixels")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    if a.frames < 1 or a.noise <= 0:
        ap.error("--frames must be >= 1 and --noise > 0")
    from pathlib import Path
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    model = load_model()
    ids = load_landmark_set(a.set)
    rng = np.random.default_rng(a.seed)
    base = random_params(model, rng, yaw_deg=0.0, pitch_deg=0.0, roll_deg=0.0)
    mus, sigmas, gts = [], [], []
    for f in range(a.frames):
        ph = 2 * np.pi * f / max(a.frames, 2)
        rot = base.rotations.copy()
        rot[0] = [0.15 * np.sin(2 * ph), 0.5 * np.sin(ph), 0.05 * np.cos(ph)]
        psi = base.expression.copy()
        psi[model.expression_names.index("jawOpen")] = 0.5 * (1 - np.cos(ph))
        fr = make_frame(model, base.replace(rotations=rot, expression=psi), ids, rng, noise_px=a.noise,
                        face_px=300, image_px=720)
        # widen the square 720 render to 1280x720: shift u by the extra half width
        mus.append(fr.mu + [280.0, 0.0])
        sigmas.append(fr.sigma)
        gts.append(fr.vertices.astype(np.float32))
    with atomic_write(a.out, "wb") as fh:
        np.savez(fh, mu=np.stack(mus), sigma=np.stack(sigmas), landmark_set=a.set,
                 image_size=np.array([1280, 720]), focal_px=fr.camera.focal, gt_vertices=np.stack(gts))
    print(f"wrote {a.out}: {a.frames} frames of {ids.size} {a.set} landmarks")
    return 0


if __name__ == "__main__":
    sys.exit(main())
