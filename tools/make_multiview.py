"""Write a synthetic multi-view landmark file for ``lmfit3d capture`` (and its true calibration).

C cameras on a ring around a head (camera 0 frontal, the others spread over 160 degrees of yaw at
a few heights), F frames of expression animation with slow head motion, dense landmarks projected
into every camera with per-landmark Gaussian noise of known sigma: landmarks facing away from a
camera get a large sigma and noise of that size, as do a few random ones
(``lmfit3d.synthetic.make_multiview``).  Ground-truth meshes (world mm = camera 0's frame) are
stored as ``gt_vertices`` so a fit can be scored.

Usage::

    python tools/make_multiview.py OUT.npz [--cameras 4] [--frames 10] [--set dense703]
        [--noise 1.0] [--calibration OUT.json] [--seed 0]
"""
import argparse
import json
import sys

import numpy as np

from lmfit3d.landmarks import load_landmark_set
from lmfit3d.model import load_model
from lmfit3d.paths import atomic_write
from lmfit3d.synthetic import make_multiview


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out")
    ap.add_argument("--cameras", type=int, default=4)
    ap.add_argument("--frames", type=int, default=10)
    ap.add_argument("--set", default="dense703")
    ap.add_argument("--noise", type=float, default=1.0, help="landmark noise sigma, pixels")
    ap.add_argument("--outliers", type=float, default=0.05, help="fraction of landmarks with sigma 15 px")
    ap.add_argument("--calibration", help="also write the true calibration JSON here")
    ap.add_argument("--no-gt", action="store_true", help="do not store ground-truth meshes")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    if a.cameras < 1 or a.frames < 1 or a.noise <= 0:
        ap.error("--cameras and --frames must be >= 1 and --noise > 0")
    model = load_model()
    ids = load_landmark_set(a.set)
    mv = make_multiview(model, ids, np.random.default_rng(a.seed), n_cameras=a.cameras, n_frames=a.frames,
                        noise_px=a.noise, outlier_fraction=a.outliers)
    extra = {} if a.no_gt else {"gt_vertices": np.stack([mv.vertices(model, f).astype(np.float32)
                                                         for f in range(a.frames)])}
    with atomic_write(a.out, "wb") as fh:
        np.savez(fh, mu=mv.mu, sigma=mv.sigma, landmark_set=a.set, image_size=mv.image_size,
                 gt_identity=mv.params[0].identity, **extra)
    if a.calibration:
        with atomic_write(a.calibration, "w") as fh:
            json.dump(mv.calibration_json(), fh, indent=1)
    print(f"wrote {a.out}: {a.cameras} cameras x {a.frames} frames of {ids.size} {a.set} landmarks")
    return 0


if __name__ == "__main__":
    sys.exit(main())
