"""Latency and drops of ``lmfit3d live`` (issue 19): the shared clip re-encoded at 720p (and 1080p) and
30 / 60 fps into a temporary folder, played in real time to a loopback Live Link Face receiver.

    python bench/live_latency.py [--sizes 720 1080] [--rates 30 60] [--backends mediapipe network]
                                 [--seconds 6] [--compare]

Latency: from the decoded frame being ready (the reader thread's hand-over) to the packet sent, ms
(median, p99 over the frames after the identity is held or, when it is not held, after the first 2 s:
the keyframe refits of the first seconds are reported apart as the maximum).  Drops: frames the tracker
never took.  CPU: thread time of the tracking thread per frame, ms (decode runs in ffmpeg and the reader
thread).  One thread (OMP/NUMBA/OPENBLAS = 1).  ``--compare`` also runs two-pass ``track`` on the
clip and prints bench/live_compare.py's figures against a paced ``live`` run of it.
"""
import argparse
import os
import socket
import sys
import tempfile
from pathlib import Path

for _v in ("OMP_NUM_THREADS", "NUMBA_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

import numpy as np  # noqa: E402

from lmfit3d.live import LiveOptions, run_live  # noqa: E402
from lmfit3d.model import load_model  # noqa: E402
from lmfit3d.paths import shared_media_dir  # noqa: E402
from lmfit3d.track import TrackOptions  # noqa: E402

CLIP = shared_media_dir() / "W040_level_3_happy_029.mp4"


def make_clip(src, out, height, fps, seconds):
    """Re-encode ``src`` scaled to ``height`` rows at ``fps`` (frames repeated or dropped by ffmpeg)."""
    import subprocess

    import imageio_ffmpeg
    cmd = [imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-loglevel", "error", "-stream_loop", "-1", "-i", str(src),
           "-t", str(seconds), "-vf", f"scale=-2:{height},fps={fps}", "-c:v", "libx264", "-preset", "veryfast",
           "-crf", "18", "-pix_fmt", "yuv420p", str(out)]
    subprocess.run(cmd, check=True)
    return out


def opt_fps(path):
    import imageio_ffmpeg
    gen = imageio_ffmpeg.read_frames(str(path))
    meta = next(gen)
    gen.close()
    return float(meta["fps"])


def run_one(path, backend, model, record=None, worker=True):
    """One paced run; ``worker``: the identity refits in the worker process (the default of ``lmfit3d
    live``; run_live loads the cached model itself), else in the capture loop (``model`` given)."""
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    opt = LiveOptions(source=str(path), track=TrackOptions(backend=backend, progress=False),
                      livelink=f"127.0.0.1:{rx.getsockname()[1]}", record=record)
    res = run_live(opt, None if worker else model)
    rx.close()
    fps = float(res.frames) / max(res.seconds, 1e-9)
    res.fps = opt_fps(path)
    skip = res.held_from if res.held_from is not None else int(np.searchsorted(res.frame_index, 2 * res.fps))
    lat = np.asarray(res.latency_ms)
    return dict(frames=res.frames, drops=res.drops, drops_late=res.drops_after(skip), fps=fps, median=np.median(lat[skip:]),
                p99=np.percentile(lat[skip:], 99), warm_max=lat[:skip].max() if skip else float("nan"),
                cpu=np.median(res.cpu_ms[skip:]), held=res.held_from)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[720])
    ap.add_argument("--rates", type=int, nargs="+", default=[30, 60])
    ap.add_argument("--backends", nargs="+", default=["mediapipe"])
    ap.add_argument("--seconds", type=float, default=6.6)
    ap.add_argument("--compare", action="store_true")
    ap.add_argument("--in-loop", action="store_true",
                    help="also run each source with the identity refits in the capture loop (same run, A/B)")
    args = ap.parse_args(argv)
    model = load_model()
    print("| source | backend | refits | frames | dropped (after warm-up) | tracked fps | latency median ms | p99 ms | "
          "max in first seconds ms | CPU ms/frame |")
    print("| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    with tempfile.TemporaryDirectory() as tmp:
        for h in args.sizes:
            for fps in args.rates:
                clip = make_clip(CLIP, Path(tmp) / f"clip_{h}p{fps}.mp4", h, fps, args.seconds)
                for be in args.backends:
                    for worker in (True, False) if args.in_loop else (True,):
                        r = run_one(clip, be, model, worker=worker)
                        print(f"| {h}p {fps} fps | {be} | {'worker' if worker else 'in loop'} | {r['frames']} | "
                              f"{r['drops']} ({r['drops_late']}) | {r['fps']:.1f} | {r['median']:.1f} | {r['p99']:.1f} | "
                              f"{r['warm_max']:.0f} | {r['cpu']:.1f} |", flush=True)
        if args.compare:
            import subprocess
            live_dir, track_dir = Path(tmp) / "live", Path(tmp) / "track"
            env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent))
            # paced, as a camera would deliver it (identity refits in the worker process)
            subprocess.run([sys.executable, "-m", "lmfit3d.cli", "live", "--source", str(CLIP), "-q",
                            "--record", str(live_dir)], check=True, env=env)
            subprocess.run([sys.executable, "-m", "lmfit3d.cli", "track", str(CLIP), "-q", "-o", str(track_dir)],
                           check=True, env=env, stdout=subprocess.DEVNULL)
            subprocess.run([sys.executable, str(Path(__file__).with_name("live_compare.py")), str(live_dir),
                            str(track_dir)], check=True, env=env)
    return 0


if __name__ == "__main__":
    sys.exit(main())
