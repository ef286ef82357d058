"""Datasets: many inputs (files, folders, glob patterns, list files) tracked or fitted as one resumable
batch, in this process, in ``--jobs N`` worker processes (:func:`lmfit3d.batch.run_many`) or on a
Dask cluster (:func:`lmfit3d.cluster.run_dask`).

:func:`collect_inputs` turns the command line's inputs into files; :func:`run_batch` skips the inputs
that ``OUT/lmfit3d_manifest.json`` records as done with the same options (:mod:`lmfit3d.manifest`),
runs the others, records each as it finishes, removes the private folders of runs that died
(:func:`lmfit3d.paths.sweep_work_dirs`) and writes ``OUT/summary.csv``.
"""
import glob
import os
import re
import sys
from dataclasses import dataclass, replace
from pathlib import Path

from .batch import check_output_names, run_many
from .manifest import MANIFEST_NAME, SUMMARY_NAME, Manifest, options_key, summary_row, write_summary
from .media import _check_out_dir, expand_inputs
from .paths import sweep_work_dirs

URL_RE = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")
GLOB_CHARS = re.compile(r"[*?\[]")


def _refuse_url(text, where):
    if URL_RE.match(text):
        raise ValueError(f"{where}{text}: URLs are not supported (lmfit3d reads local files; download the "
                         "videos first, e.g. to a shared folder the workers see)")


def read_list(path):
    """The entries of a list file: one path (file, folder or glob pattern) a line; blank lines and
    lines starting with ``#`` are skipped; a relative path is relative to the list file's folder."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"--from-list {path}: cannot read the list ({' '.join(str(exc).split())})") from None
    out = []
    for k, line in enumerate(lines, 1):
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        _refuse_url(entry, f"{path}, line {k}: ")
        p = Path(os.path.expanduser(entry))
        out.append(p if p.is_absolute() else path.parent / p)
    if not out:
        raise ValueError(f"--from-list {path}: the list names no input")
    return out


def collect_inputs(inputs, from_list, extensions):
    """(files, batch) from the command line's inputs and ``--from-list`` file.

    Each input is a file (kept as given, even when missing: that input's run reports it), a folder
    (its files with ``extensions``, see :func:`lmfit3d.media.expand_inputs`) or a glob pattern
    (``clips/*.mp4``, ``data/**/*.mp4``; quoted so the shell leaves it alone) matching files with
    ``extensions``.  Files named twice are kept once.  ``batch`` is True for a resumable batch: more
    than one file, or any folder, pattern or list.  ValueError for a URL, a pattern matching nothing.
    """
    for p in inputs:
        _refuse_url(str(p), "")
    entries = [Path(p) for p in inputs] + (read_list(from_list) if from_list else [])
    batch = from_list is not None
    files = []
    for p in entries:
        if not p.exists() and GLOB_CHARS.search(str(p)):
            found = sorted(Path(q) for q in glob.glob(str(p), recursive=True)
                           if Path(q).suffix.lower() in extensions and Path(q).is_file())
            if not found:
                raise ValueError(f"{p}: the pattern matches no file with extension {', '.join(extensions)}")
            files += found
            batch = True
        else:
            batch |= p.is_dir()
            files += expand_inputs([p], extensions)
    seen, unique = set(), []
    for f in files:
        key = os.path.realpath(f)
        if key not in seen:
            seen.add(key)
            unique.append(f)
    return unique, batch or len(unique) > 1


@dataclass(frozen=True)
class BatchReport:
    """What :func:`run_batch` did.  rows: summary.csv rows in input order; ran / failed: inputs run
    now and how many of them failed; skipped_done / skipped_failed: inputs skipped on their records;
    summary: the path of summary.csv."""
    rows: tuple
    ran: int
    failed: int
    skipped_done: int
    skipped_failed: int
    summary: Path

    @property
    def failed_total(self):
        """Inputs that stand failed (now, or on an earlier record that was not retried)."""
        return sum(r["status"] != "done" for r in self.rows)


def run_batch(kind, paths, out_dir, options, *, jobs=1, dask=None, retry_failed=False, force=False,
              model_path=None, on_done=None, progress=False):
    """Run the inputs ``paths`` (``kind`` "video" or "image") into ``out_dir`` as a resumable batch.

    Inputs recorded as done with the same options are skipped, failed ones too unless
    ``retry_failed``; ``force`` runs everything.  The rest run in this process (``jobs`` 1), in
    ``jobs`` worker processes, or as Dask tasks (``dask``: ``local:N`` or a scheduler address).
    ``on_done(path, result, error)`` is called as each finishes; ``progress``: a bar over inputs on
    stderr.  ValueError before anything runs when outputs would collide.  Returns a
    :class:`BatchReport`; summary.csv is written also when interrupted (unfinished: "not run").
    """
    _check_out_dir(out_dir)
    check_output_names(kind, paths, out_dir, options, reserved=(MANIFEST_NAME, SUMMARY_NAME))
    manifest = Manifest(out_dir, kind, options_key(kind, options, model_path))
    sweep_work_dirs(out_dir)
    rows, todo, skipped = {}, [], {"done": 0, "failed": 0}
    for p in paths:
        state = None if force else manifest.state(p)
        if state == "done" or (state == "failed" and not retry_failed):
            skipped[state] += 1
            rows[str(p)] = summary_row(kind, p, manifest.get(p), False)
        else:
            todo.append(p)
    failed = []
    bar = _bar(progress and len(todo) > 1, len(todo), kind)
    opt = replace(options, progress=False) if bar is not None else options

    def done(path, result, error):
        rec = manifest.record(path, result, error)
        rows[str(path)] = summary_row(kind, path, rec, True)
        if error is not None:
            failed.append(path)
        if on_done:
            if bar is not None:
                with bar.external_write_mode(file=sys.stderr):
                    on_done(path, result, error)
            else:
                on_done(path, result, error)
        if bar is not None:
            bar.update(1)
    try:
        if todo and dask:
            from .cluster import run_dask
            run_dask(kind, todo, out_dir, opt, dask, model_path=model_path, on_done=done)
        elif todo:
            run_many(kind, todo, out_dir, opt, jobs=jobs, model_path=model_path, on_done=done)
    finally:
        if bar is not None:
            bar.close()
        sweep_work_dirs(out_dir, wait=True)
        table = [rows.get(str(p)) or summary_row(kind, p, {}, False) for p in paths]
        summary = write_summary(out_dir, kind, table)
    return BatchReport(tuple(table), len(todo), len(failed), skipped["done"], skipped["failed"], summary)


def _bar(enabled, total, kind):
    if not enabled:
        return None
    from tqdm import tqdm
    return tqdm(total=total, desc="videos" if kind == "video" else "photos", unit="input", dynamic_ncols=True)
