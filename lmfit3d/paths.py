"""Where lmfit3d finds its inputs and keeps its cache.

- ``$LMFIT3D_HOME`` (default ``~/.cache/lmfit3d``): git-ignored cache of built artefacts
  (the face model file, converted ONNX models).
- ``$ICT_FACEKIT`` (default ``../shared/ict-facekit`` next to the checkout): ICT-FaceKit sources.
- ``data/`` in the repository: small project-made files (landmark index lists).
"""
import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def cache_dir() -> Path:
    """Root of the cache (``$LMFIT3D_HOME`` or ``~/.cache/lmfit3d``)."""
    env = os.environ.get("LMFIT3D_HOME")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "lmfit3d"


def default_ict_dir() -> Path:
    """ICT-FaceKit root: ``$ICT_FACEKIT`` or ``../shared/ict-facekit`` beside the checkout."""
    env = os.environ.get("ICT_FACEKIT")
    if env:
        return Path(env).expanduser()
    for cand in (REPO_ROOT.parent / "shared" / "ict-facekit", Path.cwd().parent / "shared" / "ict-facekit"):
        if cand.is_dir():
            return cand
    return REPO_ROOT.parent / "shared" / "ict-facekit"


def data_dir() -> Path:
    """Directory of the project's small data files (``data/`` of the checkout)."""
    for cand in (Path(__file__).resolve().parent / "data", REPO_ROOT / "data"):
        if cand.is_dir():
            return cand
    raise FileNotFoundError("lmfit3d data/ directory not found; install with `pip install -e .`")


def shared_media_dir() -> Path:
    """The shared test media folder (``../shared/media``)."""
    return default_ict_dir().parent / "media"


@contextmanager
def atomic_write(path, mode="wb"):
    """Open a temporary file beside ``path`` and rename it over ``path`` only on success.

    A failure (exception) removes the temporary file, so no half-written output is left that
    looks complete.
    """
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise ValueError(f"output directory does not exist: {parent}")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=parent)
    try:
        with os.fdopen(fd, mode) as f:
            yield f
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)       # mkstemp creates 0600; give the usual file mode
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def raise_on_sigterm():
    """Turn SIGTERM into ``SystemExit(143)`` in this process, so that ``finally`` blocks run and remove
    temporary files (the ``lmfit3d`` command and its worker processes)."""
    import signal

    def handler(signum, frame):
        raise SystemExit(128 + signum)
    try:
        signal.signal(signal.SIGTERM, handler)
    except ValueError:                      # not the main thread: leave the handler as it is
        pass


@contextmanager
def work_dir(out_dir, name):
    """A private temporary folder for one run's outputs, in the output folder ``out_dir``.

    Created exclusively (``tempfile.mkdtemp``: a new, unpredictable ``.NAME.XXXXXXXX.part`` name,
    mode 0700), so no other run, and no link planted beforehand, can share or redirect its files; it
    is removed with everything in it on every exit path (success, error, ``SystemExit`` from the
    command line's SIGTERM handler).  :func:`commit_outputs` moves the finished files out of it.
    While it exists its owner holds an ``flock`` on it, which the kernel releases when the owner dies
    in any way (SIGKILL, a lost Dask worker): :func:`sweep_work_dirs` removes only unlocked folders.
    """
    path = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".part", dir=out_dir))
    fd = _lock_fd(path, blocking=True)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
        if fd is not None:
            os.close(fd)


def _lock_fd(path, blocking):
    """An open descriptor of ``path`` holding an exclusive ``flock``; None when the lock is held
    elsewhere (``blocking`` False) or flock is unavailable."""
    try:
        import fcntl
    except ImportError:
        return None
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
    except OSError:
        os.close(fd)
        return None
    return fd


WORK_DIR_RE = re.compile(r"\..+\.[a-z0-9_]{8}\.part")


def sweep_work_dirs(out_dir, min_age_s=1.0, wait=False):
    """Remove the private folders (:func:`work_dir`) in ``out_dir`` whose owner died without removing
    its own (killed with SIGKILL, a worker lost by Dask): those nobody holds locked, older than
    ``min_age_s`` (a folder is locked right after it is created); ``wait``: wait until the younger
    ones are that old and look again.  Returns the removed names; live runs' folders are left alone."""
    import time
    removed, young = [], 0.0
    try:
        entries = list(Path(out_dir).iterdir())
    except OSError:
        return removed
    for p in entries:
        if not WORK_DIR_RE.fullmatch(p.name) or p.is_symlink() or not p.is_dir():
            continue
        try:
            age = time.time() - p.stat().st_mtime
        except OSError:
            continue
        if age < min_age_s:
            young = max(young, min_age_s - age)
            continue
        fd = _lock_fd(p, blocking=False)
        if fd is None:
            continue
        try:
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p.name)
        finally:
            os.close(fd)
    if wait and young > 0:
        time.sleep(young)
        removed += sweep_work_dirs(out_dir, min_age_s)
    return removed


def new_file(path):
    """Create the empty file ``path`` exclusively (O_EXCL, no link followed); return ``path``."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    os.close(fd)
    return Path(path)


def reserve(path, nbytes):
    """Allocate ``nbytes`` of disk for the file ``path`` (a memory-mapped array) now, so that a full
    disk is an ``OSError`` naming the file here rather than a SIGBUS when a mapped page is written."""
    fd = os.open(path, os.O_RDWR)
    try:
        if hasattr(os, "posix_fallocate"):
            os.posix_fallocate(fd, 0, int(nbytes))
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror, str(path)) from None
    finally:
        os.close(fd)


@contextmanager
def folder_lock(folder):
    """Hold an exclusive advisory lock (``flock``) on the folder itself (no lock file is left)."""
    try:
        import fcntl
    except ImportError:                     # no flock on this platform: renames stay atomic one by one
        yield
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)                        # closing releases the lock


def commit_outputs(out_dir, work, names, stale=None, keep=()):
    """Move the finished outputs ``names`` (files or folders) from the private folder ``work``
    (:func:`work_dir`) into ``out_dir`` as one set, replacing what is there.

    Under :func:`folder_lock`, so concurrent runs into one folder install whole sets one after the
    other and never mix two.  An existing entry is replaced by a rename of the entry itself (a link
    there is replaced, never followed).  Entries of ``out_dir`` whose name fully matches the regular
    expression ``stale`` and that this run did not write (members of an earlier run's output set:
    its overlay, meshes or extra faces) are removed, except the paths in ``keep`` (this run's inputs).
    Returns the installed paths.
    """
    out_dir, work = Path(out_dir), Path(work)
    trash = work / ".replaced"
    trash.mkdir(exist_ok=True)
    keep = {os.path.realpath(p) for p in keep}
    installed = []
    with folder_lock(out_dir):
        old = [p for p in out_dir.iterdir() if stale and re.fullmatch(stale, p.name) and p.name not in names
               and os.path.realpath(p) not in keep]
        for k, p in enumerate(old):
            os.replace(p, trash / f"stale{k}")
        for k, name in enumerate(names):
            src, dst = work / name, out_dir / name
            if src.is_dir() and os.path.lexists(dst):
                os.replace(dst, trash / f"old{k}")      # a folder cannot be renamed over a folder
            os.replace(src, dst)
            installed.append(dst)
    return installed


def read_npz(path, required=()):
    """All arrays of an .npz file as a dict; ValueError naming the file when it is missing, not a
    readable .npz, or lacks one of the ``required`` keys."""
    import numpy as np
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: input file not found")
    import zipfile
    if not zipfile.is_zipfile(path):
        raise ValueError(f"{path}: not a readable .npz file (not a zip archive of arrays)")
    try:
        with np.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    except Exception as exc:
        if "pickle" in str(exc):
            raise ValueError(f"{path}: holds Python objects (pickled data), which lmfit3d does not load; "
                             "store plain numeric or string arrays") from None
        raise ValueError(f"{path}: not a readable .npz file ({' '.join(str(exc).split())})") from None
    for key in required:
        if key not in data:
            raise ValueError(f"{path}: missing required key {key!r}")
    return data
