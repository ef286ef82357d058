"""The ``lmfit3d capture`` (multi-view, offline) and ``lmfit3d live`` (camera or stream, real time)
commands, registered by :mod:`lmfit3d.cli`.  Standard library only at import time."""
import math
import sys
import time
from pathlib import Path

from .cli_common import (CommandLineError, add_loss_options, add_model_option, loss_config, model_from, say,
                         subcommand)


def add_capture(sub):
    """Fit one identity, per-frame expression and pose, and per-camera extrinsics and focal length (when
    unknown) to multi-view landmarks by L-BFGS over all frames and cameras.  Input: either IN.npz (mu (C, F,
    L, 2), sigma (C, F, L) optional, landmark_set or vertex_ids, image_size (2,) or (C, 2), focal_px
    optional; -o OUT.npz) or --videos V1 V2 ... (one synchronised video per camera; -o OUTDIR gets
    capture.npz, capture_calibration.json, capture.csv, capture_arkit.csv).  OUT.npz: the fit-landmarks keys
    (vertices in world mm) plus camera_rotation, camera_translation, focal_px (C,), reproj_median_px /
    reproj_mean_px per camera."""
    p = subcommand(sub, "capture", add_capture, help="fit all frames of several cameras at once (offline, L-BFGS)")
    p.add_argument("input", metavar="IN.npz", nargs="?")
    p.add_argument("--videos", nargs="+", metavar="VIDEO", help="one video per camera instead of IN.npz")
    p.add_argument("-o", "--output", metavar="OUT", required=True, help="OUT.npz (IN.npz) or OUTDIR (--videos)")
    p.add_argument("--calibration", metavar="JSON",
                   help="per-camera K or focal, R, t (mm, world to camera), image_size; "
                        "missing values are estimated (see lmfit3d.capture.read_calibration)")
    p.add_argument("--calibration-out", metavar="JSON", help="write the refined calibration here (IN.npz)")
    p.add_argument("--max-iter", type=int, default=None,
                   help="solver iterations (default 200; Levenberg-Marquardt or L-BFGS: CaptureSolver.method)")
    p.add_argument("--max-frames", type=int, default=None, metavar="N", help="videos: use the first N frames")
    p.add_argument("--frame-offsets", metavar="auto|N,N,...", default=None,
                   help="unsynchronised cameras: 'auto' estimates each camera's frame offset from the landmarks' "
                        "motion, or give one integer per camera (camera j's frame t + N_j is camera 0's frame t)")
    add_model_option(p)
    p.add_argument("--gltf", action="store_true",
                   help="also write the performance as glTF 2.0 (OUT.glb beside OUT.npz, or capture.glb; "
                        "world frame, metres, the cameras; IN.npz is taken at --fps)")
    p.add_argument("--fps", type=float, default=30.0, help="frame rate of IN.npz for --gltf (default 30)")
    p.add_argument("--report", action="store_true",
                   help="--videos: also write capture_report.html (the reference camera's view)")
    add_loss_options(p)
    p.set_defaults(func=_cmd_capture)


def _cmd_capture(args):
    import warnings
    from dataclasses import replace

    from .capture import CaptureConfig, CaptureSolver
    from .capture_files import fit_capture_file, fit_capture_videos
    from .track import TrackOptions
    if (args.input is None) == (args.videos is None):
        raise CommandLineError("give either IN.npz or --videos V1 V2 ...")
    if args.input is not None:
        for path in (args.output, args.calibration_out):
            if path and not (Path(path).parent if str(Path(path).parent) else Path(".")).is_dir():
                raise ValueError(f"{path}: output directory does not exist")
    if args.report and args.videos is None:
        raise CommandLineError("--report needs --videos (the report shows the video frames)")
    if args.gltf:
        from .exports import require_gltf
        require_gltf()
    if not (math.isfinite(args.fps) and args.fps > 0):
        raise CommandLineError(f"--fps must be a positive number, got {args.fps}")
    cfg = CaptureConfig() if args.max_iter is None else CaptureConfig(solver=CaptureSolver(max_iter=args.max_iter))
    cfg = replace(cfg, fit=loss_config(args, cfg.fit))
    offsets = args.frame_offsets
    if offsets is not None and offsets != "auto":
        try:
            offsets = [int(v) for v in offsets.split(",")]
        except ValueError:
            raise CommandLineError(f"--frame-offsets must be 'auto' or integers separated by commas, "
                                   f"got {args.frame_offsets!r}") from None
    model = model_from(args.model)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if args.input is not None:
            res = fit_capture_file(args.input, args.output, args.calibration, args.calibration_out,
                                   model=model, config=cfg, progress=say, frame_offsets=offsets)
            if args.gltf:
                from .exports import write_capture_gltf
                write_capture_gltf(Path(args.output).with_suffix(".glb"), model, res, args.fps)
        else:
            opt = TrackOptions(max_frames=args.max_frames, progress=sys.stderr.isatty(), gltf=args.gltf,
                               report=args.report)
            res = fit_capture_videos(args.videos, args.output, args.calibration, model=model, config=cfg,
                                     options=opt, progress=say, frame_offsets=offsets)
    for w in caught:
        say(f"warning: {w.message}")
    for j in range(res.focal.size):
        state = (f"median {res.reproj_median_px[j]:.2f} px, mean {res.reproj_mean_px[j]:.2f} px, "
                 f"focal {res.focal[j]:.1f} px") if res.camera_ok[j] else "no face, left out"
        print(f"camera {j}: {state}")
    print(f"{args.output}: {res.expression.shape[0]} frames x {int(res.camera_ok.sum())} cameras fitted "
          f"in {res.seconds_init + res.seconds_solve:.2f} s ({res.iterations} L-BFGS iterations, "
          f"{res.message})")
    return 0


def add_live(sub):
    """Track a camera, a stream or a video file (played at its own frame rate) causally, one frame at a time,
    and send every frame's 52 ARKit blendshapes and head/eye pose to Live Link Face (Unreal, UDP) and/or VMC
    (OSC) receivers; --record writes track's CSV, ARKit CSV and NPZ, complete when capture ends (end of
    input, Ctrl-C, SIGTERM).  Frames are dropped, never queued, when tracking falls behind."""
    p = subcommand(sub, "live", add_live,
                   help="live capture: camera or stream in, ARKit blendshapes and head pose out in real time")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--camera", type=int, metavar="N", help="camera N (v4l2 / avfoundation / dshow)")
    src.add_argument("--source", metavar="FILE|URL", help="a video file (played in real time) or a stream URL")
    p.add_argument("--livelink", metavar="HOST[:PORT]", help="send Live Link Face packets (default port 11111)")
    p.add_argument("--subject", default="lmfit3d", metavar="NAME", help="Live Link subject name (default lmfit3d)")
    p.add_argument("--vmc", metavar="HOST[:PORT]", help="send VMC bundles over OSC (default port 39539; needs "
                                                        "python-osc)")
    p.add_argument("--record", metavar="OUTDIR", help="also write NAME.csv, NAME_arkit.csv, NAME.npz here")
    p.add_argument("--as-fast-as-possible", action="store_true",
                   help="files: no real-time pacing, every frame tracked (tests, demos)")
    p.add_argument("--identity", metavar="FILE.npz", help="hold the identity (and focal) of a `track` NPZ")
    p.add_argument("--identity-seconds", type=float, default=10.0, metavar="S",
                   help="refine identity and focal on keyframes for at most S seconds, then hold (default 10)")
    p.add_argument("--calibrate-neutral", type=float, default=0.0, metavar="S",
                   help="take the mean of the first S seconds as the resting face and subtract it")
    p.add_argument("--backend", choices=("mediapipe", "mediapipe-attention", "network"), default="mediapipe",
                   help="landmark network")
    p.add_argument("--no-iris", action="store_true", help="skip the iris network (no gaze)")
    p.add_argument("--focal", type=float, default=None, metavar="PX", help="focal length in pixels if known")
    p.add_argument("--max-frames", type=int, default=None, metavar="N", help="stop after N tracked frames")
    add_model_option(p)
    p.add_argument("-q", "--quiet", action="store_true", help="no live status line")
    p.set_defaults(func=_cmd_live)


def _cmd_live(args):
    from .live import LiveOptions, run_live
    from .track import TrackOptions
    track = TrackOptions(backend=args.backend, iris=not args.no_iris, focal_px=args.focal, max_frames=args.max_frames,
                         progress=False)
    opt = LiveOptions(camera=args.camera, source=args.source, pace=not args.as_fast_as_possible, track=track,
                      identity_file=args.identity, identity_seconds=args.identity_seconds,
                      calibrate_neutral=args.calibrate_neutral, livelink=args.livelink, subject=args.subject,
                      vmc=args.vmc, record=args.record)
    tty = sys.stderr.isatty()
    last = [0.0]

    def status(msg):        # one line rewritten in place on a terminal, a line every 5 s otherwise
        if tty:
            print(f"\r{msg}\033[K", end="", file=sys.stderr, flush=True)
        elif time.time() - last[0] >= 5:
            last[0] = time.time()
            say(msg)

    res = run_live(opt, model_from(args.model) if args.model else None, status=None if args.quiet else status)
    if tty and not args.quiet:
        print(file=sys.stderr)
    lat = res.percentile(50), res.percentile(99)
    print(f"{res.name}: {res.frames} frames tracked ({res.success} with a face), {res.drops} dropped, latency "
          f"median {lat[0]:.1f} ms, p99 {lat[1]:.1f} ms ({res.ended})"
          + (f" -> {args.record}" if args.record else ""))
    return 0
