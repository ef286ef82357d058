"""Media input: video files streamed frame by frame, still images, folders of either, and the
output folder check and progress bars of the commands that read them.

:class:`VideoReader` (imageio / ffmpeg) and :class:`FrameList` (frames in memory) are the frame
sources of :func:`lmfit3d.track.track_video`; :func:`landmarks_from_video` runs a landmark
predictor over every frame of one (offline use: ``lmfit3d capture --videos``).
"""
import os
import re
from pathlib import Path

import numpy as np

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp")


class VideoReader:
    """Frames of a video file, decoded by ffmpeg and streamed one at a time.

    Each iteration runs ffmpeg anew (the overlay pass reads the file a second time) and yields only
    the frames the decoder produced (``-fps_mode passthrough``: no duplicates padding a variable
    frame rate or a late first frame).  Attributes: ``name`` (file stem), ``fps``, ``size`` (width,
    height), ``n_frames_hint`` (from the container; may be None or off), and after an iteration ran
    to its end, ``decoded`` (frames yielded) and ``problem`` (None, or ffmpeg's reason when the
    decoder met damaged or missing data: a truncated file).
    """

    def __init__(self, path):
        self.path = Path(path)
        self.name = self.path.stem
        if not self.path.is_file():
            raise ValueError(f"{self.path}: file not found")
        if self.path.suffix.lower() in IMAGE_EXTENSIONS:
            raise ValueError(f"{self.path}: an image, not a video (use `lmfit3d fit` for photos)")
        if self.path.stat().st_size == 0:
            raise ValueError(f"{self.path}: cannot open as a video (empty file)")
        meta = _probe(self.path)
        self.fps = meta["fps"] or 25.0
        self.size = meta["size"]
        self.n_frames_hint = int(round(meta["duration"] * self.fps)) if meta["duration"] else None
        self.decoded, self.problem = 0, None

    def __iter__(self):
        import subprocess
        import tempfile
        import imageio_ffmpeg
        w, h = self.size
        cmd = [imageio_ffmpeg.get_ffmpeg_exe(), "-nostdin", "-hide_banner", "-loglevel", "error", "-i",
               str(self.path), "-map", "0:v:0", "-f", "rawvideo", "-pix_fmt", "rgb24", "-fps_mode", "passthrough",
               "-"]
        self.decoded, self.problem = 0, None
        nbytes = w * h * 3
        with tempfile.TemporaryFile() as log:
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log)
            ended = False
            try:
                while True:
                    buf = bytearray(nbytes)
                    got = proc.stdout.readinto(buf)
                    while 0 < got < nbytes:
                        more = proc.stdout.readinto(memoryview(buf)[got:])
                        if not more:
                            break
                        got += more
                    if got < nbytes:
                        ended = True
                        break
                    self.decoded += 1
                    yield np.frombuffer(buf, np.uint8).reshape(h, w, 3)
            finally:
                if not ended:
                    proc.kill()                 # the consumer stopped early (--max-frames) or failed
                proc.stdout.close()
                rc = proc.wait()
            log.seek(0)
            text = log.read().decode("utf-8", "replace")
        if rc != 0 or text.strip():
            self.problem = _ffmpeg_reason(text) or f"ffmpeg exit status {rc}"
        if self.decoded == 0 and self.problem:
            raise ValueError(f"{self.path}: cannot decode video ({self.problem})")


def _probe(path):
    """fps (0: unknown), size (width, height) of the frames ffmpeg decodes (turned upright as the
    container's rotation says) and duration (s, 0: unknown) of a video's first video stream: one
    ffmpeg run that decodes nothing (``-frames:v 0`` into a null output), ~20 ms where imageio's
    reader took 60-80 ms.  ValueError (one line, ffmpeg's reason) when it is not a video."""
    import subprocess

    import imageio_ffmpeg
    from imageio_ffmpeg._parsing import parse_ffmpeg_header
    cmd = [imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-nostdin", "-i", str(path), "-map", "0:v:0",
           "-frames:v", "0", "-f", "null", "-"]
    run = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    text = run.stderr.decode("utf-8", "replace")
    if run.returncode == 0 and " Video: " in text:
        import logging
        # a phone video's rotation tag: the upright size differs from the stored one, and the parser
        # warns about it: expected, not the user's concern
        quiet = logging.getLogger("imageio_ffmpeg")
        level = quiet.level
        quiet.setLevel(logging.ERROR)
        try:
            meta = parse_ffmpeg_header("ffmpeg\n\n" + text)   # the parser skips a two-line banner
            w, h = meta["size"]
            if w > 0 and h > 0:
                return dict(fps=float(meta["fps"]), size=(int(w), int(h)), duration=float(meta["duration"]))
        except (IndexError, ValueError, AttributeError):
            pass
        finally:
            quiet.setLevel(level)
    opened = "Input #0" in text and " Video: " not in text
    reason = "no video stream" if opened else _ffmpeg_reason(text) or f"ffmpeg exit status {run.returncode}"
    raise ValueError(f"{path}: cannot open as a video ({reason})")


def _ffmpeg_reason(text):
    """The reason in ffmpeg's (or imageio's) error text, without the version banner and build
    configuration: its last error line (with a first, different one before it), log prefixes
    like ``[h264 @ 0x...]`` removed, at most 200 characters."""
    skip = ("ffmpeg version", "built with", "configuration:", "lib", "Could not load meta", "=== stderr",
            "Consider increasing", "frame=", "Input #", "Duration:", "Stream #", "Metadata:")
    lines = []
    for line in text.splitlines():
        line = re.sub(r"^(\[[^\]]*@ 0x[0-9a-f]+\]\s*)+", "", line.strip())
        if line and not line.startswith(skip) and line not in lines:
            lines.append(line)
    bad = [ln for ln in lines if re.search(r"error|invalid|not found|corrupt|truncat|missing|unsupported",
                                            ln, re.I)] or lines
    if not bad:
        return ""
    picked = bad[-1] if len(bad) == 1 or bad[0] in bad[-1] else f"{bad[0]}; {bad[-1]}"
    return picked[:200]


class FrameList:
    """Decoded frames held in memory, with the interface of :class:`VideoReader` (benchmarks, tests)."""

    def __init__(self, frames, fps=25.0, name="frames"):
        self.frames = list(frames)
        self.fps = float(fps)
        self.name = name
        self.n_frames_hint = len(self.frames)

    def __iter__(self):
        return iter(self.frames)


def _short(exc):
    s = " ".join(str(exc).split())
    return s[:200] if s else type(exc).__name__


def read_image(path):
    """(H, W, 3) uint8 RGB of an image file; ValueError with the file name when unreadable.

    As image viewers show it: the EXIF orientation of phone photos applied, CMYK, palette, grey and
    alpha images converted to RGB, 16-bit and float images scaled to 8 bits, the first frame of an
    animation.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: file not found")
    if path.suffix.lower() in VIDEO_EXTENSIONS:
        raise ValueError(f"{path}: a video, not an image (use `lmfit3d track` for videos)")
    if path.stat().st_size == 0:
        raise ValueError(f"{path}: cannot read as an image (empty file)")
    try:
        img = _read_pillow(path)
    except Exception:                   # not a format Pillow reads: imageio's other plugins
        import imageio.v2 as imageio
        try:
            img = np.asarray(imageio.imread(str(path)))
        except Exception as exc:
            reason = _short(exc)
            if "backend" in reason or "pip install" in reason:       # imageio's plugin hints
                reason = "unknown or damaged image format"
            raise ValueError(f"{path}: cannot read as an image ({reason})") from None
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    if img.ndim != 3 or img.shape[2] < 3:
        raise ValueError(f"{path}: unsupported image shape {img.shape}")
    if img.dtype != np.uint8:
        top = float(np.iinfo(img.dtype).max) if img.dtype.kind in "ui" else max(float(np.nanmax(img)), 1e-12)
        img = np.clip(np.nan_to_num(img.astype(np.float64)) / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return np.ascontiguousarray(img[:, :, :3])


def _read_pillow(path):
    """The image as Pillow reads it (EXIF orientation applied): uint8 RGB, or a 2-D array of the
    file's own depth for 16-bit and float grey images."""
    from PIL import Image, ImageOps
    with Image.open(path) as im:
        im.seek(0)
        im = ImageOps.exif_transpose(im)
        if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
            arr = np.asarray(im)
            return arr.astype(np.uint16) if im.mode.startswith("I;16") else arr
        return np.asarray(im.convert("RGB"))


def _progress(enabled, total, desc):
    if not enabled:
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc=desc, unit="frame", leave=False, dynamic_ncols=True)


def _check_out_dir(out_dir):
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"{out_dir}: output path exists and is not a folder")
    out_dir.mkdir(parents=True, exist_ok=True)
    if not os.access(out_dir, os.W_OK):
        raise ValueError(f"{out_dir}: output folder is not writable")


def expand_inputs(paths, extensions):
    """Files from a list of files and folders (folders: their files with the given extensions, sorted,
    without lmfit3d's own overlays: ``S_overlay.EXT`` beside a media file ``S.*``)."""
    out = []
    media = VIDEO_EXTENSIONS + IMAGE_EXTENSIONS
    for p in paths:
        p = Path(p)
        if p.is_dir():
            found = sorted(q for q in p.iterdir() if q.suffix.lower() in extensions and q.is_file())
            stems = {q.stem for q in p.iterdir() if q.suffix.lower() in media}
            found = [q for q in found if not (q.stem.endswith("_overlay") and q.stem[:-8] in stems)]
            if not found:
                raise ValueError(f"{p}: folder holds no file with extension {', '.join(extensions)}")
            out += found
        else:
            out.append(p)
    return out


def landmarks_from_video(path, predictor, max_frames=None, progress=False):
    """Landmarks of every frame of a video (offline use: all frames held in memory).

    Returns mu (F, L, 2) and sigma (F, L) pixels (NaN where no face was found), presence (F,),
    image_size (width, height) and fps.
    """
    reader = path if hasattr(path, "fps") else VideoReader(path)
    predictor.reset()
    mus, sigmas, pres = [], [], []
    size = None
    pbar = _progress(progress, reader.n_frames_hint, f"{reader.name} landmarks")
    for frame in reader:
        if max_frames is not None and len(mus) >= max_frames:
            break
        size = (frame.shape[1], frame.shape[0])
        p = predictor.track(frame)
        n = predictor.vertex_ids.size
        mus.append(p.mu if p is not None else np.full((n, 2), np.nan))
        sigmas.append(p.sigma if p is not None else np.full(n, np.nan))
        pres.append(p.presence if p is not None else 0.0)
        if pbar is not None:
            pbar.update(1)
    if pbar is not None:
        pbar.close()
    if not mus:
        raise ValueError(f"{getattr(reader, 'path', reader.name)}: video has no frames")
    return np.stack(mus), np.stack(sigmas), np.array(pres), size, reader.fps
