"""Many inputs at once (``lmfit3d track`` / ``lmfit3d fit`` with several files, ``--jobs N``): each
video or photo in turn or in worker processes, one failing input reported while the others finish.

Inputs whose outputs would share a name (``a/face.jpg`` and ``b/face.jpg``; ``x.mp4`` and
``x_arkit.mp4``) are refused before anything runs (:func:`check_output_names`).
"""
import os
from pathlib import Path

from .context import FitContext
from .media import _check_out_dir
from .model import load_model
from .outputs import face_output_names, track_output_names
from .paths import raise_on_sigterm
from .stills import fit_image, still_output_names
from .track import PREDICTOR_FIELDS, make_predictor, track_video


def output_names(kind, path, options):
    """The output file and folder names that input ``path`` may write with ``options``."""
    stem = Path(path).stem
    if kind == "video":
        csv, arkit, npz, overlay, meshes, glb, report = track_output_names(stem)[0]
        faces = [n for k in range(1, options.face_limit(True)) for n in face_output_names(stem, k)
                 if options.mesh_every or not n.endswith("_meshes")]
        return ([csv, arkit, npz] + [overlay] * bool(options.overlay) + [meshes] * bool(options.mesh_every)
                + [glb] * bool(options.gltf) + [report] * bool(options.report) + list(dict.fromkeys(faces)))
    names, _ = still_output_names(stem, options.face_limit(False), options.mesh_format)
    if options.gltf:
        names = names + [n.rsplit(".", 1)[0] + ".glb" for n in names if n.endswith(".json")]
    return names


def check_output_names(kind, paths, out_dir, options, reserved=()):
    """ValueError (one line) when two inputs would write an output of the same name into ``out_dir``,
    an output would replace one of the inputs, or take one of the ``reserved`` names (the batch's
    own files)."""
    owner = {}
    inputs = {os.path.realpath(p): p for p in paths}
    for p in paths:
        for name in output_names(kind, p, options):
            if name in reserved:
                raise ValueError(f"{p} would write {Path(out_dir) / name}, the batch's own file; rename the input")
            other = owner.setdefault(name, p)
            if other is not p:
                raise ValueError(f"{other} and {p} would both write {Path(out_dir) / name}; "
                                 "give them different names or separate runs with different -o folders")
            target = os.path.realpath(Path(out_dir) / name)
            if target in inputs:
                raise ValueError(f"{p} would write {Path(out_dir) / name}, which is the input {inputs[target]}; "
                                 "choose another -o folder")


def inputs_in(out_dir, paths):
    """The inputs that lie in ``out_dir`` (by name or through a link): the ones a run's clean-up of an
    earlier output set must never remove (``keep`` of :func:`lmfit3d.paths.commit_outputs`)."""
    where = {os.path.abspath(out_dir), os.path.realpath(out_dir)}
    return tuple(os.path.abspath(p) for p in paths if os.path.dirname(os.path.abspath(p)) in where
                 or os.path.dirname(os.path.realpath(p)) in where)


# What one process builds for its first input and re-uses for the next ones: (key, predictor, context).
# A predictor's ONNX sessions and a context's sparsity table and intersection term cost ~0.1 s, a
# tenth of a short clip's tracking (docs/results.md, "Batches (issue 21)").
_REUSED = [None]


def _reused(model, options):
    """The landmark predictor and the :class:`~lmfit3d.context.FitContext` of ``options`` in this
    process: built for its first input, re-used while the model and the options that make them are
    the same (``track_video`` and ``fit_image`` reset the predictor's tracking state first)."""
    threshold = options.config().sparsity_threshold_mm
    key = (id(model), threshold) + tuple(getattr(options, f) for f in PREDICTOR_FIELDS)
    if _REUSED[0] is None or _REUSED[0][0] != key or _REUSED[0][2].model is not model:
        predictor = make_predictor(options)
        _REUSED[0] = (key, predictor, FitContext(model, predictor.vertex_ids, threshold))
    return _REUSED[0][1], _REUSED[0][2]


def _run_one(kind, path, out_dir, options, model_path, keep=()):
    """Worker body: one input, errors turned into a one-line message (picklable result)."""
    try:
        model = load_model(model_path)
        predictor, context = _reused(model, options)
        if kind == "video":
            return str(path), track_video(path, out_dir, options, model, predictor, keep, context=context), None
        return str(path), fit_image(path, out_dir, options, model, predictor, keep, context=context), None
    except (ValueError, OSError) as exc:
        if isinstance(exc, OSError) and exc.filename is not None and exc.strerror:
            return str(path), None, f"{exc.filename}: {exc.strerror}"
        return str(path), None, " ".join(str(exc).split()) or type(exc).__name__


def run_many(kind, paths, out_dir, options, jobs=1, model_path=None, on_done=None):
    """Process many inputs (``kind`` "video" or "image"), ``jobs`` worker processes.

    One failing input is reported and the others finish.  Returns a list of (path, result, error)
    in input order; ``on_done(path, result, error)`` is called as each finishes.  ValueError before
    anything runs when two inputs would write outputs of the same name.  On ``SystemExit`` /
    ``KeyboardInterrupt`` (SIGTERM via :func:`raise_on_sigterm`, Ctrl-C) the workers are stopped the
    same way, each removing its temporary files.
    """
    from dataclasses import replace
    _check_out_dir(out_dir)
    check_output_names(kind, paths, out_dir, options)
    keep = inputs_in(out_dir, paths)
    if jobs <= 1 or len(paths) <= 1:
        out = []
        for p in paths:
            r = _run_one(kind, p, out_dir, options, model_path, keep)
            if on_done:
                on_done(*r)
            out.append(r)
        return out
    import multiprocessing as mpc
    from concurrent.futures import ProcessPoolExecutor, as_completed
    opt = replace(options, progress=False)
    results = {}
    ex = ProcessPoolExecutor(max_workers=jobs, mp_context=mpc.get_context("spawn"), initializer=raise_on_sigterm)
    try:
        futs = {ex.submit(_run_one, kind, p, out_dir, opt, model_path, keep): str(p) for p in paths}
        for fu in as_completed(futs):
            try:
                r = fu.result()
            except Exception as exc:        # a worker died (signal, out of memory): one line, not a traceback
                r = (futs[fu], None, f"{futs[fu]}: the worker process failed ({' '.join(str(exc).split())})")
            results[futs[fu]] = r
            if on_done:
                on_done(*r)
    except BaseException:
        _stop_workers(ex)
        raise
    ex.shutdown(wait=True)
    return [results[str(p)] for p in paths]


def _stop_workers(ex, timeout=10.0):
    """Cancel pending inputs and send SIGTERM to the running workers; wait for them to clean up."""
    procs = list(getattr(ex, "_processes", {}).values())
    ex.shutdown(wait=False, cancel_futures=True)
    for pr in procs:
        if pr.is_alive():
            pr.terminate()
    for pr in procs:
        pr.join(timeout)
        if pr.is_alive():
            pr.kill()
