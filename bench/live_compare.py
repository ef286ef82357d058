"""Live (causal, one pass) against two-pass ``track`` on the same clip: per ARKit shape the mean absolute
difference of the weights, and of the head yaw/pitch/roll (degrees), over the frames after ``--skip`` s.

    python bench/live_compare.py LIVE_DIR TRACK_DIR [--skip 2]

Both folders hold ``NAME_arkit.csv`` (``lmfit3d live --record`` and ``lmfit3d track``).
"""
import argparse
import csv
import sys
from pathlib import Path

import numpy as np


def read_arkit(path):
    with open(path, newline="") as fh:
        rows = list(csv.reader(fh))
    head = rows[0]
    vals = np.array([[float(v) if v else np.nan for v in r[2:]] for r in rows[1:]])
    return head[2:], vals


def compare(live_csv, track_csv, live_npz, fps, skip_s=2.0):
    """(names (61,), mean abs diff (61,), max abs diff (61,)) over the frames after skip_s; live frames are
    matched to track frames by their source frame number (``frame_index`` of the live NPZ)."""
    names, lv = read_arkit(live_csv)
    _, tv = read_arkit(track_csv)
    idx = np.load(live_npz)["frame_index"]
    keep = idx >= int(round(skip_s * fps))
    d = np.abs(lv[keep] - tv[idx[keep]])
    return names, np.nanmean(d, 0), np.nanmax(d, 0)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("live")
    ap.add_argument("track")
    ap.add_argument("--skip", type=float, default=2.0)
    args = ap.parse_args(argv)
    live = sorted(Path(args.live).glob("*_arkit.csv"))[0]
    name = live.name[:-len("_arkit.csv")]
    npz = Path(args.live) / f"{name}.npz"
    fps = float(np.load(npz)["fps"])
    names, mean, mx = compare(live, Path(args.track) / live.name, npz, fps, args.skip)
    shapes = slice(0, 52)
    order = np.argsort(-mean[shapes])
    print(f"{name}: after {args.skip:g} s; blendshapes: mean abs diff {np.nanmean(mean[shapes]):.4f}, "
          f"worst shape mean {mean[shapes].max():.4f}, max {np.nanmax(mx[shapes]):.3f}")
    print("worst shapes: " + ", ".join(f"{names[i]} {mean[i]:.3f}" for i in order[:8]))
    print("head yaw/pitch/roll mean abs diff (deg): " + ", ".join(f"{mean[52 + k]:.2f}" for k in range(3))
          + "; max " + ", ".join(f"{mx[52 + k]:.2f}" for k in range(3)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
