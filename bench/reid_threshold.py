"""Re-identification distances on renders: the units of ``lmfit3d.faces.reid_score``.

Renders clips of several heads (``lmfit3d.synthetic.multi_face_clip``: two shots, the heads' places
reversed at the cut), runs pass 1 of multi-face tracking, labels each tracklet with the head it
follows (nearest projected head centre), and prints, for the pairs of tracklets in different shots,
the identity distance (mm RMS over the landmark vertices) and the colour distance (RGB 0..1) of the
same person and of different people, and the error rate of the combined score at its threshold.

    python bench/reid_threshold.py [--clips 6] [--heads 3]
"""
import argparse
from dataclasses import replace
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lmfit3d import faces as F  # noqa: E402
from lmfit3d.fit import Tracker  # noqa: E402
from lmfit3d.model import load_model  # noqa: E402
from lmfit3d.predict import MediaPipeLandmarks  # noqa: E402
from lmfit3d.synthetic import multi_face_clip  # noqa: E402
from lmfit3d.track import TrackOptions  # noqa: E402


FOCAL = False


class _Mem:
    def __init__(self, cap, n_landmarks):
        self.arr = np.full((cap, n_landmarks, 6), np.nan, np.float32)

    def put(self, f, rec):
        self.arr[f] = rec

    def close(self):
        pass


def tracklets_of(model, mp, clip):
    """Pass-1 tracklets of a rendered clip, each labelled with its head (``t.head``) and shot."""
    opt = TrackOptions(progress=False)
    cfg = opt.config()
    h, w = clip.frames[0].shape[:2]
    proto = Tracker(model, mp.vertex_ids, (w, h), clip.camera.focal if FOCAL else None, cfg)
    n = len(clip.frames)
    fol = F.FaceFollower(mp, proto.fresh, lambda s, k: _Mem(n, mp.vertex_ids.size), replace(opt, max_faces=10))
    for f, frame in enumerate(clip.frames):
        fol.step(frame, f)
    F.fit_identities(fol.tracklets, clip.camera.focal if FOCAL else None)
    for t in fol.tracklets:
        c = np.nanmean(fol.stores[t.slot].arr[t.start, :, :2], 0)
        d = np.linalg.norm(clip.centres[t.start] - c, axis=1)
        t.head = int(np.nanargmin(d))
        t.shot = int(t.start >= clip.cut)
    return fol.tracklets


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clips", type=int, default=6)
    ap.add_argument("--heads", type=int, default=3)
    ap.add_argument("--seed", type=int, default=100, help="first clip's seed")
    ap.add_argument("--face-px", type=float, default=90.0, help="the heads' size in shot 1")
    ap.add_argument("--face-px2", type=float, help="the heads' size in shot 2 (default: --face-px)")
    ap.add_argument("--save", help="write the distances to this .npz")
    args = ap.parse_args(argv)
    model = load_model()
    mp = MediaPipeLandmarks()
    same, diff = [], []
    for seed in range(args.clips):
        clip = multi_face_clip(model, np.random.default_rng(args.seed + seed), n_heads=args.heads, shot=10,
                               size=(160 * args.heads, 240),
                               face_px=args.face_px, face_px2=args.face_px2)
        ts = [t for t in tracklets_of(model, mp, clip) if t.identity() is not None]
        for a in ts:
            for b in ts:
                if a.index < b.index and a.shot != b.shot:
                    d_id = F.identity_distance(model, mp.vertex_ids, a.identity(), b.identity())
                    d_col = F.colour_distance(a.appearance(), b.appearance())
                    px = min(F._face_px(a), F._face_px(b))
                    score = F.reid_score(model, mp.vertex_ids, a, b)
                    (same if a.head == b.head else diff).append((d_id, d_col, px, score))
    same, diff = np.array(same), np.array(diff)
    if args.save:
        np.savez(args.save, same=same, diff=diff)
    for name, arr in (("same person", same), ("different people", diff)):
        print(f"{name:17s} pairs {len(arr):3d}  identity mm: median {np.median(arr[:, 0]):.2f} "
              f"min {arr[:, 0].min():.2f} max {arr[:, 0].max():.2f}  colour: median {np.median(arr[:, 1]):.3f} "
              f"min {arr[:, 1].min():.3f} max {arr[:, 1].max():.3f}")
    print(f"smaller face of a pair: median {np.median(np.r_[same[:, 2], diff[:, 2]]):.0f} px")
    score = lambda a: a[:, 3]  # noqa: E731
    print(f"score (units {F.REID_IDENTITY_MM} mm, {F.REID_COLOUR} RGB, identity weighted by face size / "
          f"{F.REID_FACE_PX:g} px squared): same person max {score(same).max():.2f}, "
          f"different people min {score(diff).min():.2f}; errors at 1: "
          f"{int((score(same) >= 1).sum())} missed, {int((score(diff) < 1).sum())} false matches")
    for k, name in ((0, "identity alone"), (1, "colour alone")):
        lo, hi = same[:, k].max(), diff[:, k].min()
        print(f"{name}: separable {lo < hi} (same max {lo:.3f}, different min {hi:.3f})")


if __name__ == "__main__":
    main()
