"""Accuracy cost of the alternating iris policy (issue 4, docs/history/NOTES_frontend.md); prints a markdown table.

Run::

    python bench/iris_policy_eval.py [--frames N]

On each shared clip, :class:`MediaPipeLandmarks` runs twice on the same frames: ``iris_policy="both"``
(the iris network on both eyes of every frame) and ``"alternate"`` (one eye per frame, the other eye's
iris centre carried in its eye-crop frame).  Reported per clip: frames compared (both tracked), the
distance between the two policies' iris centres as a fraction of the eye width (outer to inner
corner; median, 95th percentile, max) over all eyes and frames, and the same distance on the carried
eyes only; for scale, the frame-to-frame motion of the iris centres relative to their eye corners
under "both" (median, 95th percentile), which is what a one-frame-old measurement can miss.
"""
import argparse
import sys
from pathlib import Path

import one_thread  # noqa: E402,F401  (before NumPy: every thread pool at one thread)

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lmfit3d.paths import shared_media_dir  # noqa: E402
from lmfit3d.predict import IrisPredictor, MediaPipeLandmarks  # noqa: E402
from lmfit3d.media import VideoReader  # noqa: E402

CLIPS = ("W040_level_3_happy_029.mp4", "W023_level_2_surprised_010.mp4", "QoT0S2vu9m4_00002.mp4",
         "short_hamilton_clip.mp4")


def _eye_frame(points):
    """Iris centres (2, 2) in each eye's corner frame (fractions of the eye width) and the widths."""
    out, widths = np.empty((2, 2)), np.empty(2)
    for e, (i, j) in enumerate(IrisPredictor.CORNERS):
        a, b = points[i], points[j]
        d = b - a
        wdt = np.hypot(*d)
        ax = d / wdt
        q = points[468 + e] - (a + b) / 2
        out[e] = (q @ ax, q @ np.array([-ax[1], ax[0]]))
        widths[e] = wdt
    return out / widths[:, None], widths


def evaluate(path, max_frames):
    both, alt = MediaPipeLandmarks(iris_policy="both"), MediaPipeLandmarks(iris_policy="alternate")
    err, carried, motion = [], [], []
    prev = None
    n = 0
    for k, frame in enumerate(VideoReader(path)):
        if k >= max_frames:
            break
        tracking, eye = alt.roi is not None, alt._iris_next
        pb, pa = both.track(frame), alt.track(frame)
        if pb is None or pa is None:
            prev = None
            continue
        n += 1
        rb, wb = _eye_frame(pb.points)
        ra, _ = _eye_frame(pa.points)
        d = np.linalg.norm(ra - rb, axis=1)
        err += list(d)
        if tracking:
            carried.append(d[1 - eye])              # the eye not measured on this frame
        if prev is not None:
            motion += list(np.linalg.norm(rb - prev, axis=1))
        prev = rb
    return n, np.array(err), np.array(carried), np.array(motion)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--frames", type=int, default=300, help="frames per clip (default 300)")
    args = ap.parse_args(argv)
    rows = ["| clip | frames | all eyes: median / p95 / max | carried eye: median / p95 / max | "
            "iris motion per frame (both): median / p95 |", "|---|---:|---:|---:|---:|"]
    f = lambda a: " / ".join(f"{v:.3f}" for v in a) if len(a) else "-"  # noqa: E731
    for clip in CLIPS:
        n, err, car, mot = evaluate(shared_media_dir() / clip, args.frames)
        q = lambda a: [np.median(a), np.percentile(a, 95), a.max()] if a.size else []  # noqa: E731
        rows.append(f"| {clip} | {n} | {f(q(err))} | {f(q(car))} | "
                    f"{f([np.median(mot), np.percentile(mot, 95)] if mot.size else [])} |")
    print("Iris centre difference, alternate vs both policies, as a fraction of the eye width:\n")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
