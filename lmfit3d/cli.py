"""The ``lmfit3d`` command line.

Every command is a ``_cmd_<name>(args) -> int`` function registered by an ``_add_<name>(sub)``
function on the subparsers object that :func:`build_parser` creates.  To add a command (e.g.
``fit-landmarks``), write both functions and append the ``_add_`` function to ``_COMMANDS``.

User errors (``ValueError``, including :class:`lmfit3d.meshio.MeshFormatError`, and ``OSError``,
including ``FileNotFoundError``) are reported by :func:`main` as one line,
``lmfit3d: error: <message>``, with exit status 2; bad arguments are reported the same way.

Importing this module stays light (standard library only): NumPy, Numba and the model load inside
the command functions, so ``lmfit3d --help`` answers at once.
"""
import argparse
import json
import math
import time
import sys
from pathlib import Path

from .cli_capture import add_capture, add_live
from .cli_common import (PROG, CommandLineError, Parser, add_loss_options, add_model_option, loss_config,
                         model_from, say, subcommand)

DEMO_CLIP = "W040_level_3_happy_029.mp4"

DESCRIPTION = """\
3D face reconstruction from dense 2D landmarks (Wood et al., "3D Face Reconstruction with Dense
Landmarks", ECCV 2022): the ICT-FaceKit morphable model with a four-joint LBS rig, fitted on a
Numba engine.  Units are millimetres throughout."""

EPILOG = """\
commands:
  model build    build the face model from ICT-FaceKit and save it to the cache (run this first)
  model info     summary of the built model (--json for a machine-readable one)
  model export   write the model, shaped by identity and expression values, as OBJ or PLY
  track          track faces in video files: per-frame CSV, ARKit CSV, parameters, meshes, overlay
  fit            fit still images: mesh, parameters JSON, overlay PNG
  capture        offline multi-view fit of all frames and cameras (L-BFGS)
  fit-landmarks  fit the model to 2D landmarks from an .npz (any landmark source)
  live           live capture: camera or stream in, Live Link Face / VMC out in real time

Run `lmfit3d COMMAND --help` (e.g. `lmfit3d model export --help`) for a command's options.
Environment: LMFIT3D_HOME (cache, default ~/.cache/lmfit3d), ICT_FACEKIT (ICT-FaceKit root).
Conventions (axes, joints, parameter layout) and the full workflow: README.md of the repository."""


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Top-level help: keeps the hand-wrapped description and command list."""

    def __init__(self, prog):
        super().__init__(prog, max_help_position=32)


# --------------------------------------------------------------------------------------------
# Helpers shared by commands (the ones capture and live use too: cli_common)
# --------------------------------------------------------------------------------------------

def _human_size(n_bytes):
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n_bytes < 1024 or unit == "GiB":
            return f"{n_bytes:.0f} {unit}" if unit == "B" else f"{n_bytes:.1f} {unit}"
        n_bytes /= 1024.0


def _model_summary(model):
    """One line describing a built model."""
    return (f"{model.n_vertices} vertices, {model.faces.shape[0]} triangles, "
            f"{model.n_identity} identity modes, {model.n_expression} expressions, "
            f"{model.n_joints} joints ({', '.join(model.joint_names)}), units mm")


def _parse_identity(text, n_identity):
    """Identity coefficients from a JSON list (text or a file): ``[b0, b1, ...]`` or ``{"identity": [...]}``.

    Fewer than ``n_identity`` values leave the remaining coefficients at zero.
    """
    import numpy as np

    source = "--identity-coeffs"
    if not text.lstrip().startswith(("[", "{")):  # not inline JSON: a file name
        path = Path(text)
        if not path.is_file():
            raise ValueError(f"--identity-coeffs: {text!r} is neither a JSON list nor an existing file")
        source, text = str(path), path.read_text(encoding="utf-8")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{source}: not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None
    if isinstance(data, dict):
        if "identity" not in data:
            raise ValueError(f"{source}: a JSON object must have an \"identity\" list")
        data = data["identity"]
    if not isinstance(data, list) or not all(
            isinstance(x, (int, float)) and not isinstance(x, bool) for x in data):
        raise ValueError(f"{source}: expected a JSON list of numbers")
    if len(data) > n_identity:
        raise ValueError(f"{source}: {len(data)} identity coefficients given, the model has {n_identity}")
    beta = np.zeros(n_identity)
    beta[:len(data)] = data
    if not np.isfinite(beta).all():
        raise ValueError(f"{source}: identity coefficients must be finite")
    return beta


def _parse_expression(items, names):
    """Expression weights from ``NAME=W`` items; unnamed shapes stay at zero."""
    import numpy as np

    psi = np.zeros(len(names))
    seen = set()
    for item in items or ():
        name, sep, value = item.partition("=")
        name = name.strip()
        if not sep or not name:
            raise ValueError(f"--expression {item!r}: expected NAME=WEIGHT, e.g. jawOpen=0.8")
        if name not in names:
            raise ValueError(f"--expression: unknown expression {name!r} "
                             f"(`lmfit3d model info` lists the {len(names)} names)")
        if name in seen:
            raise ValueError(f"--expression: {name!r} given more than once")
        try:
            w = float(value)
        except ValueError:
            raise ValueError(f"--expression {item!r}: weight must be a number") from None
        if not math.isfinite(w):
            raise ValueError(f"--expression {item!r}: weight must be finite")
        seen.add(name)
        psi[names.index(name)] = w
    return psi


# --------------------------------------------------------------------------------------------
# model build / info / export
# --------------------------------------------------------------------------------------------

def _add_model(sub):
    """Build, inspect and export the ICT-FaceKit face model (millimetres)."""
    p = subcommand(sub, "model", _add_model, help="build, inspect and export the face model")
    msub = p.add_subparsers(dest="model_command", metavar="ACTION", required=True,
                            parser_class=Parser)

    _add_model_build(msub)
    _add_model_info(msub)
    _add_model_export(msub)


def _add_model_build(msub):
    """Read ICT-FaceKit's FaceXModel OBJ files (cm), build the rigged model in mm and save it atomically as a
    versioned .npz.  Prints the path, the file size and a summary; progress goes to stderr."""
    b = subcommand(msub, "build", _add_model_build,
                   help="build the model from ICT-FaceKit and save it (atomically)")
    b.add_argument("--ict", metavar="DIR",
                   help="ICT-FaceKit root or its FaceXModel folder "
                        "(default: $ICT_FACEKIT or ../shared/ict-facekit)")
    b.add_argument("--out", metavar="PATH",
                   help="model file to write (default: $LMFIT3D_HOME/ict_face_model_v1.npz)")
    b.add_argument("--no-warm-up", action="store_true",
                   help="do not compile the fitter's Numba kernels now (the first track/fit then does)")
    b.set_defaults(func=_cmd_model_build)


def _add_model_info(msub):
    """Summary of the built model: sizes, expression names, joints, landmark sets."""
    i = subcommand(msub, "info", _add_model_info, help="summary of the built model")
    i.add_argument("--json", action="store_true",
                   help="print the full summary as JSON (FaceModel.info())")
    add_model_option(i)
    i.set_defaults(func=_cmd_model_info)


def _add_model_export(msub):
    """Evaluate the model with the given identity coefficients and expression weights (neutral pose) and
    write the mesh with its triangles, in mm."""
    e = subcommand(
        msub, "export", _add_model_export,
        help="write the model mesh (OBJ or PLY) for given identity/expression values",
        epilog="example: lmfit3d model export smile.ply --expression mouthSmile_L=1 mouthSmile_R=1 "
               "--identity-coeffs '[2.0, -1.0]'")
    e.add_argument("out", metavar="OUT", help="output mesh; the format follows the suffix (.obj or .ply)")
    e.add_argument("--identity-coeffs", metavar="JSON",
                   help="identity coefficients: a JSON list (inline or a .json file), or an object "
                        "with an \"identity\" list; missing trailing values are 0")
    e.add_argument("--expression", metavar="NAME=W", nargs="+", action="extend", default=[],
                   help="expression weight(s), e.g. jawOpen=0.7 eyeBlink_L=1 (others 0)")
    add_model_option(e)
    e.set_defaults(func=_cmd_model_export)


def _cmd_model_build(args):
    """``lmfit3d model build``: build from ICT-FaceKit and save atomically; prints path, size, summary."""
    from .model import build_model, default_model_path, save_model

    out = Path(args.out) if args.out else default_model_path()
    if out.exists() and out.is_dir():
        raise ValueError(f"--out {out} is a directory; give a file path")
    t0 = time.perf_counter()
    say("reading ICT-FaceKit (neutral mesh)")
    model = build_model(args.ict, progress=say)
    say(f"saving {out}")
    path = save_model(model, out)
    say(f"saved in {time.perf_counter() - t0:.1f} s")
    if not args.no_warm_up:
        from .warmup import warm_up
        say("compiling the fitter's kernels on a synthetic clip (once: later runs load them from Numba's cache)")
        say(f"kernels ready in {warm_up(model):.1f} s")
    print(f"{path} ({_human_size(path.stat().st_size)})")
    print(_model_summary(model))
    return 0


def _cmd_model_info(args):
    """``lmfit3d model info``: a readable summary, or ``FaceModel.info()`` as JSON with ``--json``."""
    model = model_from(args.model)
    info = model.info()
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    from .model import default_model_path

    path = Path(args.model) if args.model else default_model_path()
    joints = ", ".join(f"{j['name']}<-{j['parent']}" if j["parent"] else j["name"] for j in info["joints"])
    sets = ", ".join(f"{n} ({len(ids)})" for n, ids in info["landmark_sets"].items()) or "none"
    lines = [
        f"model:       {path} (format v{info['version']})",
        f"units:       {info['units']}",
        f"mesh:        {info['n_vertices']} vertices, {info['n_faces']} triangles",
        f"identity:    {info['n_identity']} modes, prior: {info['identity_prior']['type']} "
        f"({info['identity_prior']['components']} component(s))",
        f"joints:      {joints}",
        f"eye radius:  {info['eye_radius_mm'][0]} / {info['eye_radius_mm'][1]} mm (L / R)",
        f"landmarks:   {sets}",
        f"expressions: {len(info['expression_names'])}",
    ]
    names = info["expression_names"]
    for k in range(0, len(names), 4):
        lines.append("  " + " ".join(f"{n:<17}" for n in names[k:k + 4]).rstrip())
    print("\n".join(lines))
    return 0


def _cmd_model_export(args):
    """``lmfit3d model export``: write the mesh for the given identity / expression (zero pose)."""
    out = Path(args.out)
    suffix = out.suffix.lower()
    if suffix not in (".obj", ".ply"):
        raise ValueError(f"{out}: output must end in .obj or .ply")
    if not (out.parent if str(out.parent) else Path(".")).is_dir():
        raise ValueError(f"{out}: output directory does not exist")

    from .meshio import write_obj, write_ply
    from .model import Params
    from .skinning import evaluate_mesh

    model = model_from(args.model)
    params = Params.zeros(model)
    params = params.replace(expression=_parse_expression(args.expression, list(model.expression_names)))
    if args.identity_coeffs is not None:
        params = params.replace(identity=_parse_identity(args.identity_coeffs, model.n_identity))
    verts = evaluate_mesh(model, params)
    (write_obj if suffix == ".obj" else write_ply)(out, verts, model.faces)
    print(f"{out}: {verts.shape[0]} vertices, {model.faces.shape[0]} triangles (mm)")
    return 0


# --------------------------------------------------------------------------------------------
# Parser and entry point
# --------------------------------------------------------------------------------------------

def _add_fit_landmarks(sub):
    """Fit identity, expression and pose to per-frame 2D landmarks (Gaussian: mu, sigma in pixels) by sparse
    Levenberg-Marquardt.  IN.npz: mu (F, L, 2), sigma (F, L) optional, landmark_set or vertex_ids,
    image_size (w, h), focal_px optional.  OUT.npz: vertices (F, V, 3) mm, identity, expression, rotations,
    translation, focal_px, per-frame cost/iterations/status (see the README)."""
    p = subcommand(sub, "fit-landmarks", _add_fit_landmarks,
                   help="fit the model to 2D landmarks from an .npz (any landmark source)")
    p.add_argument("input", metavar="IN.npz")
    p.add_argument("-o", "--output", metavar="OUT.npz", required=True)
    p.add_argument("--mesh-dir", metavar="DIR", help="also write one OBJ mesh per frame here")
    p.add_argument("--temporal-weight", type=float, default=None,
                   help="weight of the temporal term (default: FitConfig's)")
    add_model_option(p)
    add_loss_options(p)
    p.set_defaults(func=_cmd_fit_landmarks)


def _cmd_fit_landmarks(args):
    from .fit import FitConfig
    from .landmark_files import fit_landmarks_file
    from .meshio import write_obj

    out = Path(args.output)
    if not (out.parent if str(out.parent) else Path(".")).is_dir():
        raise ValueError(f"{out}: output directory does not exist")
    if args.mesh_dir and not Path(args.mesh_dir).is_dir():
        Path(args.mesh_dir).mkdir(parents=True)
    cfg = FitConfig() if args.temporal_weight is None else FitConfig(w_temporal=args.temporal_weight)
    cfg = loss_config(args, cfg)
    model = model_from(args.model)
    t0 = time.perf_counter()
    res = fit_landmarks_file(args.input, out, model=model, config=cfg)
    nf = res.status.size
    ok = int((res.status >= 0).sum())
    if args.mesh_dir:
        for f in range(nf):
            if res.status[f] >= 0:
                write_obj(Path(args.mesh_dir) / f"frame_{f:05d}.obj", res.vertices(model, f), model.faces)
    import numpy as np
    dt = time.perf_counter() - t0
    print(f"{out}: {nf} frames fitted ({ok} ok) in {dt:.2f} s; focal {res.focal[-1]:.1f} px; "
          f"median cost {np.nanmedian(res.cost) if np.isfinite(res.cost).any() else np.nan:.1f}")
    if ok < nf:
        bad = np.flatnonzero(res.status < 0)
        listed = ", ".join(str(int(f)) for f in bad[:10]) + (", ..." if bad.size > 10 else "")
        say(f"error: {args.input}: {nf - ok} of {nf} frames could not be fitted (too few landmarks or the "
            f"fit failed: frame {listed}); their outputs are NaN with status < 0")
        return 1
    return 0


def _add_media_options(p, default_output=None, backend="mediapipe"):
    p.add_argument("-o", "--output", metavar="OUTDIR", required=default_output is None, default=default_output,
                   help="output folder (created if missing)" + (f"; default {default_output}/" if default_output else ""))
    p.add_argument("--backend", choices=("mediapipe", "mediapipe-attention", "network"), default=backend,
                   help="landmarks: MediaPipe's face mesh + iris with learnt sigma, MediaPipe's attention "
                        "mesh (refined lips, eyes, irises; one network), or lmfit3d's own "
                        f"probabilistic dense320 network (trained on synthetic faces); default {backend}")
    p.add_argument("--roi", choices=("aligned", "axis"), default="aligned",
                   help="ROI strategy: eyes levelled (real time) or unrotated (offline)")
    p.add_argument("--sigma-jitter", type=int, default=0, metavar="K",
                   help="add the spread of K jittered crops to the landmark sigma (slower)")
    p.add_argument("--fixed-sigma", action="store_true",
                   help="one sigma for every landmark instead of the learnt per-landmark table (ablation)")
    p.add_argument("--no-iris", action="store_true", help="skip the iris network (no gaze)")
    p.add_argument("--focal", type=float, default=None, metavar="PX",
                   help="focal length in pixels if known (default: estimated from a 45 degree start)")
    p.add_argument("--mesh-format", choices=("obj", "ply"), default="obj")
    p.add_argument("--gltf", action="store_true",
                   help="also write NAME.glb: the fitted head (metres) with its 53 morph targets (ARKit names), "
                        "skeleton and animation (glTF 2.0, for Blender, Unity, Unreal; needs pygltflib)")
    p.add_argument("--overlay-style", choices=("shaded", "wireframe", "landmarks"), default="shaded",
                   help="overlay drawing: shaded head, wireframe of the visible mesh (the face stays "
                        "visible) or landmarks (fitted red over detected green)")
    add_loss_options(p)
    p.add_argument("--jobs", type=int, default=1, metavar="N", help="worker processes (one input each)")
    add_model_option(p)
    _add_batch_options(p)


def _add_batch_options(p):
    g = p.add_argument_group(
        "batches", "Several inputs, a folder, a glob pattern or --from-list make a resumable batch: "
                   "OUT/lmfit3d_manifest.json records each finished input (size, time, version, options) "
                   "and a rerun skips those done; OUT/summary.csv lists every input's status.")
    g.add_argument("--from-list", metavar="FILE",
                   help="also take the inputs listed in FILE (one path, folder or glob pattern a line; "
                        "# comments; relative to FILE's folder; URLs are not supported)")
    g.add_argument("--dask", metavar="ADDRESS",
                   help="run one task per input on a Dask cluster: a scheduler's address (tcp://host:8786; "
                        "the workers must see the inputs and OUT at the same paths) or local:N (N worker "
                        "processes here); needs pip install \"lmfit3d[cluster]\"")
    g.add_argument("--retry-failed", action="store_true", help="run again the inputs that failed in an earlier batch")
    g.add_argument("--force", action="store_true", help="run every input, even those done earlier")


def _add_track(sub):
    """Track the face in each video: MediaPipe landmarks (ONNX) with per-landmark sigma, fitted frame by frame
    by sparse Levenberg-Marquardt with the identity estimated from keyframes of the whole clip and then
    held.  Writes NAME.csv (per-frame pose, gaze, 53 expression weights, 68 fitted points), NAME_arkit.csv
    (Live Link Face layout), NAME.npz (all parameters, mu and sigma); optionally meshes and
    NAME_overlay.mp4.  Inputs may be files or folders."""
    p = subcommand(sub, "track", _add_track, help="track faces in video files")
    p.add_argument("inputs", nargs="*", metavar="VIDEO",
                   help="video files, folders of videos or glob patterns ('clips/**/*.mp4') (default: the "
                        "shared demo clip ../shared/media/W040_level_3_happy_029.mp4)")
    _add_media_options(p, default_output="out")
    p.add_argument("--iris-both", action="store_true",
                   help="run the iris network on both eyes of every frame (default: one eye per frame, "
                        "taking turns; the other eye's iris follows its eye corners)")
    p.add_argument("--mesh-every", type=int, default=0, metavar="N", help="write a mesh every N frames")
    p.add_argument("--overlay", action="store_true", help="write NAME_overlay.mp4 with the fitted mesh")
    p.add_argument("--report", action="store_true",
                   help="write NAME_report.html: summary, contact sheet with the fit, blendshape, pose, gaze "
                        "and fit-error plots (one self-contained file)")
    p.add_argument("--temporal-weight", type=float, default=None, metavar="W",
                   help="weight of the temporal term pulling each frame towards the previous one "
                        "(default 0 on smoothed tracks, 0.1 with --no-smooth)")
    p.add_argument("--no-frame-noise", action="store_true",
                   help="fit the raw landmarks with the learnt sigma alone (no noise estimate, no smoothing)")
    p.add_argument("--no-smooth", action="store_true",
                   help="fit the raw landmarks with the temporal term (default 0.1) instead of the "
                        "zero-lag smoothed tracks (default: smoothed, temporal weight 0)")
    p.add_argument("--max-frames", type=int, default=None, metavar="N", help="stop after N frames")
    p.add_argument("--max-faces", type=int, default=None, metavar="N",
                   help="track at most N faces, each with its own identity and a stable id (face 0, the main "
                        "face: NAME.csv ...; face K: NAME_faceK.csv ...; NAME_faces.csv: all); default (and 0): "
                        "every face; 1: one face at a time, whoever is largest")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_track)


def _add_fit(sub):
    """Fit the model to every face of each image (largest first): writes NAME.obj/.ply (mm, camera coordinates)
    and NAME.json (parameters) for the largest face, NAME_face1.*, NAME_face2.* ... for the others, and
    NAME_overlay.png with all of them."""
    p = subcommand(sub, "fit", _add_fit, help="fit still images")
    p.add_argument("inputs", nargs="*", metavar="IMAGE",
                   help="image files, folders of images or glob patterns ('photos/*.jpg')")
    _add_media_options(p, backend="mediapipe-attention")     # = stills.PHOTO_BACKEND (why: there)
    p.add_argument("--max-faces", type=int, default=10, metavar="N",
                   help="fit at most N faces per image, largest first (1: the largest face only; 0: all)")
    p.add_argument("--same-person", action="store_true",
                   help="the photos show one person: fit one shared identity to all of them together "
                        "(expression, pose and focal length per photo)")
    p.set_defaults(func=_cmd_fit, report=False, iris_both=True,
                   mesh_every=0, overlay=False, temporal_weight=None, max_frames=None,
                   quiet=True)


def _media_run(args, kind):
    from .batch import run_many
    from .dataset import collect_inputs
    from .media import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS
    from .track import TrackOptions
    if args.jobs < 1:
        raise CommandLineError(f"--jobs must be >= 1, got {args.jobs}")
    if args.dask is not None:
        from .cluster import parse_dask, require_distributed
        parse_dask(args.dask)
        require_distributed()
        if args.jobs != 1:
            raise CommandLineError("give either --jobs N (processes here) or --dask (a Dask cluster's workers)")
    if args.max_frames is not None and args.max_frames < 1:
        raise CommandLineError(f"--max-frames must be >= 1, got {args.max_frames}")
    opt = TrackOptions(backend=args.backend, roi_strategy=args.roi, sigma_jitter=args.sigma_jitter,
                       fixed_sigma=args.fixed_sigma, iris=not args.no_iris,
                       iris_policy="both" if args.iris_both else "alternate", temporal_weight=args.temporal_weight,
                       frame_noise=not getattr(args, "no_frame_noise", False),     # track only
                       smooth=not getattr(args, "no_smooth", False),
                       focal_px=args.focal, mesh_every=args.mesh_every, mesh_format=args.mesh_format,
                       overlay=args.overlay, overlay_style=args.overlay_style, gltf=args.gltf,
                       report=args.report, max_frames=args.max_frames,
                       max_faces=getattr(args, "max_faces", None), landmark_loss=args.landmark_loss,
                       loss_scale=args.loss_scale, progress=not args.quiet and sys.stderr.isatty())
    inputs = args.inputs
    if not inputs and kind == "image" and args.from_list is None:
        raise CommandLineError("give image files, folders or patterns, or --from-list FILE")
    if not inputs and args.from_list is None:
        from .paths import shared_media_dir
        demo = shared_media_dir() / DEMO_CLIP
        if not demo.is_file():
            raise CommandLineError(f"no input given and the demo clip {demo} is missing")
        print(f"{PROG}: no input given; tracking the demo clip {demo}", file=sys.stderr)
        inputs = [demo]
    paths, batch = collect_inputs(inputs, args.from_list, VIDEO_EXTENSIONS if kind == "video" else IMAGE_EXTENSIONS)
    batch |= args.dask is not None
    failed = []

    def done(path, res, err):
        if err is not None:
            failed.append(path)
            print(f"{PROG}: error: {err}", file=sys.stderr)
            return
        for w in getattr(res, "warnings", ()):
            print(f"{PROG}: warning: {w}", file=sys.stderr)
        if kind == "video":
            t = res.timings
            fps = res.frames / max(sum(t.values()), 1e-9)
            if res.faces <= 1:
                found = f"{res.success} with a face ({100 * res.success_rate:.1f} %)"
            else:                   # every face: frames with any face, then the main face's (NAME.*)
                found = (f"{res.any_face} with a face ({100 * res.any_face / max(res.frames, 1):.1f} %), "
                         f"{res.faces} faces (the main face on {res.success}; per face {res.face_frames})")
            print(f"{path}: {res.frames} frames, {found}, {fps:.1f} frames/s -> {args.output}")
        else:
            n = res.get("faces", 1)
            what = f"{n} faces fitted, the largest" if n > 1 else "fitted"
            print(f"{path}: {what} (rms {res['fit_rms_px']:.2f} px) -> {args.output}")

    model_path = args.model
    if model_path is not None and not Path(model_path).is_file():
        raise ValueError(f"{model_path}: model file not found")
    if getattr(args, "same_person", False):
        from .model import load_model
        from .stills import fit_same_person
        if len(paths) < 2:
            raise CommandLineError("--same-person needs at least two photos")
        if args.dask or args.retry_failed or args.force:
            raise CommandLineError("--same-person fits the photos together: --dask, --retry-failed and --force "
                                   "do not apply")
        infos = fit_same_person(paths, args.output, opt, load_model(model_path))
        for path, info in zip(paths, infos):
            done(path, info, None)
        print(f"{len(paths)} photos share one identity -> {args.output}")
        return 0
    if batch:
        return _batch_run(args, kind, paths, opt, model_path, done)
    run_many(kind, paths, args.output, opt, jobs=args.jobs, model_path=model_path, on_done=done)
    if failed and len(paths) == 1:
        return 2                # one input: its one error line, the bad-input status
    if failed:
        print(f"{PROG}: {len(failed)} of {len(paths)} inputs failed", file=sys.stderr)
        return 1
    return 0


def _batch_run(args, kind, paths, opt, model_path, done):
    """A resumable batch (:func:`lmfit3d.dataset.run_batch`): skipped inputs and the totals on stderr."""
    from .dataset import run_batch
    rep = run_batch(kind, paths, args.output, opt, jobs=args.jobs, dask=args.dask, retry_failed=args.retry_failed,
                    force=args.force, model_path=model_path, on_done=done,
                    progress=not args.quiet and sys.stderr.isatty())
    if rep.skipped_done:
        say(f"{rep.skipped_done} of {len(paths)} inputs done earlier with these options, skipped "
            "(--force redoes them)")
    if rep.skipped_failed:
        say(f"{rep.skipped_failed} of {len(paths)} inputs failed earlier, skipped (--retry-failed runs them again)")
    if rep.failed_total:
        say(f"{rep.failed_total} of {len(paths)} inputs failed; summary: {rep.summary}")
        return 2 if len(paths) == 1 and rep.failed else 1
    return 0


def _cmd_track(args):
    return _media_run(args, "video")


def _cmd_fit(args):
    return _media_run(args, "image")


# Each entry registers one top-level command on the subparsers object.
_COMMANDS = [_add_model, _add_track, _add_fit, add_capture, _add_fit_landmarks, add_live]


def build_parser():
    """The ``lmfit3d`` argument parser (one subparser per command, see ``_COMMANDS``).

    Returns
    -------
    argparse.ArgumentParser
        Parsed namespaces carry ``func``, the ``_cmd_xxx(args) -> int`` to run.
    """
    from . import __version__

    parser = Parser(prog=PROG, description=DESCRIPTION, epilog=EPILOG, formatter_class=_Formatter)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True, parser_class=Parser)
    for add in _COMMANDS:
        add(sub)
    return parser


def _one_line(exc):
    msg = str(exc) if str(exc) else type(exc).__name__
    if isinstance(exc, OSError) and exc.filename is not None and exc.strerror:
        msg = f"{exc.filename}: {exc.strerror}"
    return " ".join(msg.split())


def main(argv=None) -> int:
    """Run the command line.

    Parameters
    ----------
    argv : list of str, optional
        Arguments without the program name (default: ``sys.argv[1:]``).

    Returns
    -------
    int
        Exit status: 0 on success, 2 for a user error (reported on stderr as one line), 1 when some
        of several inputs (or frames) failed, 130 on Ctrl-C, 143 on SIGTERM (temporary files removed).
    """
    import os
    from .paths import raise_on_sigterm
    raise_on_sigterm()
    # one CPU thread, as the project promises (set before numpy/numba load their thread pools)
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
        os.environ.setdefault(var, "1")
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        return int(args.func(args) or 0)
    except SystemExit as exc:  # --help / --version, or SIGTERM (raise_on_sigterm)
        if exc.code == 143:
            print(f"{PROG}: terminated", file=sys.stderr)
        return exc.code if isinstance(exc.code, int) else 0
    except (ValueError, OSError) as exc:
        print(f"{PROG}: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
