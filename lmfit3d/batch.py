"""Many inputs at once (``lmfit3d track`` / ``lmfit3d fit`` with several files, ``--jobs N``): each
video or photo in turn or in worker processes, one failing input reported while the others finish.
"""
from .media import _check_out_dir
from .model import load_model
from .stills import fit_image
from .track import track_video


def _run_one(kind, path, out_dir, options, model_path):
    """Worker body: one input, errors turned into a one-line message (picklable result)."""
    try:
        model = load_model(model_path)
        if kind == "video":
            return str(path), track_video(path, out_dir, options, model), None
        return str(path), fit_image(path, out_dir, options, model), None
    except (ValueError, OSError) as exc:
        return str(path), None, " ".join(str(exc).split()) or type(exc).__name__


def run_many(kind, paths, out_dir, options, jobs=1, model_path=None, on_done=None):
    """Process many inputs (``kind`` "video" or "image"), ``jobs`` worker processes.

    One failing input is reported and the others finish.  Returns a list of (path, result, error)
    in input order; ``on_done(path, result, error)`` is called as each finishes.
    """
    from dataclasses import replace
    _check_out_dir(out_dir)
    if jobs <= 1 or len(paths) <= 1:
        out = []
        for p in paths:
            r = _run_one(kind, p, out_dir, options, model_path)
            if on_done:
                on_done(*r)
            out.append(r)
        return out
    import multiprocessing as mpc
    from concurrent.futures import ProcessPoolExecutor
    opt = replace(options, progress=False)
    results = {}
    with ProcessPoolExecutor(max_workers=jobs, mp_context=mpc.get_context("spawn")) as ex:
        futs = {ex.submit(_run_one, kind, p, out_dir, opt, model_path): str(p) for p in paths}
        from concurrent.futures import as_completed
        for fu in as_completed(futs):
            r = fu.result()
            results[futs[fu]] = r
            if on_done:
                on_done(*r)
    return [results[str(p)] for p in paths]
