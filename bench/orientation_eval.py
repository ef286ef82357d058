"""Turned, mirrored, grey and small copies of a clip give the original's blendshapes.

A shared clip (default W040) is re-encoded with ffmpeg (imageio-ffmpeg's binary) as: turned by a
quarter, a half and three quarters; stored landscape with a 90-degree display-rotation tag (phone
videos); mirrored; grey; a quarter of the width.  Each copy is tracked with the default options and
its ARKit blendshapes compared with the original's, frame by frame: mean absolute difference over the
52 shapes and the correlation of a few (the mirrored copy's left and right shapes swapped).  A copy
that is fitted confidently but wrongly shows up here as a large difference with 100 % of frames
fitted (before the detector's orientation search, the half-turned copy gave 0.216).

    python bench/orientation_eval.py [--clip PATH] [--write-doc]
"""
import argparse
import csv
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import results_doc  # noqa: E402
from lmfit3d.paths import shared_media_dir  # noqa: E402
from lmfit3d.track import TrackOptions, track_video  # noqa: E402

# name -> ffmpeg arguments placed before (input options) and after the input
COPIES = {
    "quarter turn": ([], ["-vf", "transpose=1"]),
    "half turn": ([], ["-vf", "hflip,vflip"]),
    "three quarters": ([], ["-vf", "transpose=2"]),
    "rotation tag 90": (["-display_rotation", "90"], ["-c", "copy"]),
    "mirrored": ([], ["-vf", "hflip"]),
    "grey": ([], ["-vf", "format=gray"]),
    "quarter width": ([], ["-vf", "scale=iw/4:-2"]),
}
SHAPES = ("JawOpen", "EyeBlinkLeft", "EyeBlinkRight", "MouthSmileLeft", "BrowInnerUp")


def arkit(path):
    """(frames, 52) blendshapes and their names from an ARKit CSV."""
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    names = [k for k in rows[0] if k not in ("Timecode", "BlendShapeCount")][:52]
    return np.array([[float(r[k]) for k in names] for r in rows]), names


def mirrored(names):
    """Column order that swaps Left and Right shapes."""
    swap = [n.replace("Left", "#").replace("Right", "Left").replace("#", "Right") for n in names]
    return [names.index(n) for n in swap]


def track(src, out):
    s = track_video(src, out, TrackOptions(progress=False))
    return s.success_rate, Path(out) / f"{Path(src).stem}_arkit.csv"


def run(clip):
    import imageio_ffmpeg
    ffmpeg = imageio_ffmpeg.get_ffmpeg_exe()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        _, ref_csv = track(clip, tmp / "orig")
        ref, names = arkit(ref_csv)
        for label, (pre, post) in COPIES.items():
            src = tmp / (label.replace(" ", "_") + ".mp4")
            subprocess.run([ffmpeg, "-v", "error", "-y", *pre, "-i", str(clip), *post, str(src)], check=True)
            share, csv_path = track(src, tmp / src.stem)
            got, _ = arkit(csv_path)
            if label == "mirrored":
                got = got[:, mirrored(names)]
            n = min(len(got), len(ref))
            mad = float(np.abs(got[:n] - ref[:n]).mean())
            corr = [float(np.corrcoef(got[:n, names.index(k)], ref[:n, names.index(k)])[0, 1]) for k in SHAPES]
            rows.append((label, share, mad, corr))
    return rows


def table(rows, clip):
    head = "| copy | frames fitted | blendshape difference (mean abs, 52) | " + " | ".join(SHAPES) + " |"
    lines = [f"Copies of `{Path(clip).name}` against the original (correlation per shape):", "", head,
             "|---|---:|---:|" + "---:|" * len(SHAPES)]
    for label, share, mad, corr in rows:
        lines.append(f"| {label} | {100 * share:.0f} % | {mad:.3f} | " + " | ".join(f"{c:.2f}" for c in corr) + " |")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clip", default=str(shared_media_dir() / "W040_level_3_happy_029.mp4"))
    results_doc.add_arguments(ap)
    args = ap.parse_args(argv)
    text = table(run(Path(args.clip)), args.clip)
    print(text)
    results_doc.maybe_write(args, {"orientation_eval": text})
    return 0


if __name__ == "__main__":
    sys.exit(main())
