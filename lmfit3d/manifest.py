"""Resumable batches: the record of finished inputs in an output folder, and the batch summary.

``OUT/lmfit3d_manifest.json`` holds one record per input (keyed by the input's real path): the
input as given, its size and modification time, the lmfit3d version, a hash of the options (and of
the model file), the status (``done`` or ``failed``), the error line, and the per-input figures
(frames, success rate, fps, seconds; faces and rms for photos).  A batch skips an input whose record
says ``done`` with the same size, time, version and options and whose main output (``NAME.npz``,
``NAME.json``) is still there; a ``failed`` record is skipped too unless failures are retried;
a record of another size, time, version or options does not count (the input runs again).

The manifest is rewritten whole after each finished input, atomically
(:func:`lmfit3d.paths.atomic_write`) and under the output folder's lock
(:func:`lmfit3d.paths.folder_lock`, the one that :func:`lmfit3d.paths.commit_outputs` takes),
merged with what is on disk, so batches running into one folder keep each other's records.  Its
record is written after the outputs are in place: a run killed in between leaves outputs without
a record, and the input simply runs again.

``OUT/summary.csv`` lists every input of the last batch, in input order (:func:`write_summary`).
"""
import csv
import datetime
import hashlib
import io
import json
import os
from dataclasses import asdict
from pathlib import Path

from .paths import atomic_write, folder_lock

MANIFEST_NAME = "lmfit3d_manifest.json"
SUMMARY_NAME = "summary.csv"
FORMAT = 1
# per kind: summary.csv columns after input and status
FIGURES = {"video": ("frames", "faces", "success_rate", "fps", "seconds"), "image": ("faces", "fit_rms_px")}


def options_key(kind, options, model_path=None):
    """A hash (hex) of what makes two runs of one input give the same outputs: the kind, every
    option but the progress bar, and the model file's bytes."""
    from .model import default_model_path
    opts = {k: v for k, v in asdict(options).items() if k != "progress"}
    model = Path(model_path) if model_path is not None else default_model_path()
    h = hashlib.sha256(json.dumps({"kind": kind, "options": opts}, sort_keys=True, default=str).encode())
    try:
        with open(model, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 22), b""):
                h.update(block)
    except OSError:
        h.update(b"no model file")          # the runs themselves report the missing model
    return h.hexdigest()[:16]


def primary_output(kind, path):
    """The output whose presence marks an input's set as installed (written last, moved with the set)."""
    stem = Path(path).stem
    return f"{stem}.npz" if kind == "video" else f"{stem}.json"


def _stamp(path):
    """(real path, size, mtime_ns) of an input; size -1 when it cannot be read."""
    real = os.path.realpath(path)
    try:
        st = os.stat(real)
        return real, st.st_size, st.st_mtime_ns
    except OSError:
        return real, -1, -1


def figures(kind, result):
    """The summary figures of one finished input (a TrackSummary or a photo's JSON dict)."""
    if result is None:
        return {}
    if kind == "video":
        seconds = sum(result.timings.values())
        # success: the share of frames with a fitted face, any of them (the main face alone: NAME.npz)
        rate = result.any_face / result.frames if result.frames else 0.0
        return {"frames": result.frames, "faces": result.faces, "success_rate": round(rate, 4),
                "fps": round(result.frames / seconds, 2) if seconds > 0 else None, "seconds": round(seconds, 3)}
    return {"faces": result.get("faces", 1), "fit_rms_px": round(float(result["fit_rms_px"]), 3)}


class Manifest:
    """The records of ``OUT/lmfit3d_manifest.json`` for one batch (``kind``, options hash ``key``).

    ValueError (one line) when the file is there but not a manifest this version can read.
    """

    def __init__(self, out_dir, kind, key):
        from . import __version__
        self.out_dir = Path(out_dir)
        self.path = self.out_dir / MANIFEST_NAME
        self.kind, self.key, self.version = kind, key, __version__
        self.entries = self._read()

    def _read(self):
        if not os.path.lexists(self.path):
            return {}
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            if not (isinstance(data, dict) and data.get("format") == FORMAT and isinstance(data.get("inputs"), dict)):
                raise ValueError(f"not format {FORMAT}")
        except (OSError, ValueError) as exc:
            raise ValueError(f"{self.path}: not a readable lmfit3d manifest ({' '.join(str(exc).split())}); "
                             "move it away to start the batch afresh") from None
        return data["inputs"]

    def state(self, path):
        """``"done"``, ``"failed"`` or None (never run, or run on another version of the file or with
        other options, or its outputs are gone) for input ``path``."""
        real, size, mtime = _stamp(path)
        rec = self.entries.get(real)
        if (not isinstance(rec, dict) or rec.get("kind") != self.kind or rec.get("options") != self.key
                or rec.get("version") != self.version or rec.get("size") != size or rec.get("mtime_ns") != mtime):
            return None
        if rec.get("status") == "done":
            return "done" if (self.out_dir / primary_output(self.kind, path)).is_file() else None
        return "failed" if rec.get("status") == "failed" else None

    def get(self, path):
        """The record of input ``path`` (a dict; empty when none)."""
        return dict(self.entries.get(_stamp(path)[0]) or {})

    def record(self, path, result, error):
        """Record a finished input (``error`` None: done) and rewrite the manifest; returns the record."""
        real, size, mtime = _stamp(path)
        rec = {"input": str(path), "kind": self.kind, "size": size, "mtime_ns": mtime, "version": self.version,
               "options": self.key, "status": "failed" if error is not None else "done", "error": error,
               "finished": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
        rec.update(figures(self.kind, result))
        with folder_lock(self.out_dir):
            self.entries = self._read()              # merge with other batches' records
            self.entries[real] = rec
            text = json.dumps({"format": FORMAT, "inputs": self.entries}, indent=0, sort_keys=True)
            with atomic_write(self.path, "w") as fh:
                fh.write(text + "\n")
        return rec


def summary_row(kind, path, rec, this_run):
    """One row of summary.csv from a manifest record (``rec`` empty: the input did not run)."""
    row = {"input": str(path), "status": rec.get("status", "not run"), "error": rec.get("error") or "",
           "finished": rec.get("finished", ""), "this_run": int(bool(this_run))}
    for k in FIGURES[kind]:
        v = rec.get(k)
        row[k] = "" if v is None else v
    return row


def write_summary(out_dir, kind, rows):
    """Write ``OUT/summary.csv`` (atomically): input, status (done / failed / not run), the kind's
    figures, error, finished (UTC), this_run (0: skipped, its record is from an earlier batch)."""
    cols = ["input", "status", *FIGURES[kind], "error", "finished", "this_run"]
    buf = io.StringIO()
    w = csv.DictWriter(buf, cols, lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    path = Path(out_dir) / SUMMARY_NAME
    with atomic_write(path, "w") as fh:
        fh.write(buf.getvalue())
    return path
