"""Trustworthy runs (issue 16): private temporary files, no link followed, no name collisions, whole
output sets, a full disk, SIGTERM, truncated videos, extreme values, one-line errors and exit codes."""
import csv
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import lmfit3d
from lmfit3d.cli import main
from lmfit3d.paths import shared_media_dir

MEDIA = shared_media_dir()
SMALL_CLIP = MEDIA / "QoT0S2vu9m4_00002.mp4"        # 224 x 224, 55 frames
ENV = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(lmfit3d.__file__).parents[1]),
                                                   os.environ.get("PYTHONPATH", "")]))


def cut(dst, n, pad=None, faststart=False):
    """The first n frames of the small clip as a new video (played forwards and backwards again when n
    is longer than the clip); ``pad`` "left"/"right": 224 grey columns added on that side (the face in
    the other half of a 448-wide frame)."""
    import imageio.v2 as imageio
    reader = imageio.get_reader(str(SMALL_CLIP))
    frames = [f for _, f in zip(range(n), reader)]
    reader.close()
    while len(frames) < n:
        frames += frames[::-1][:n - len(frames)]
    if pad:
        grey = np.full_like(frames[0], 120)
        frames = [np.concatenate([grey, f] if pad == "left" else [f, grey], 1) for f in frames]
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    imageio.mimwrite(dst, frames, fps=25, codec="libx264", quality=7, macro_block_size=1,
                     ffmpeg_params=["-movflags", "+faststart"] if faststart else None)
    return dst


def leftovers(folder):
    """Temporary entries left in a folder (the runs' hidden work folders and .part files)."""
    return sorted(p.name for p in Path(folder).rglob("*") if p.name.startswith(".") or ".part" in p.name)


def rows(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def one_line(err):
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


def cli(*args, **kw):
    return subprocess.Popen([sys.executable, "-m", "lmfit3d.cli", *map(str, args)], env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


@pytest.fixture(scope="module")
def clip6(tmp_path_factory):
    return cut(tmp_path_factory.mktemp("clips") / "clip.mp4", 6)


# ------------------------------------------------------------------------------------------------
# 1-3: concurrent runs, planted links, name collisions, reruns
# ------------------------------------------------------------------------------------------------

def test_planted_links_are_never_followed(tmp_path, clip6):
    """Links at the old fixed temporary names and at the output names: no file or folder they point
    to is written, and the outputs are plain files."""
    out = tmp_path / "out"
    out.mkdir()
    victim, vdir = tmp_path / "victim.txt", tmp_path / "victim_dir"
    victim.write_text("precious")
    vdir.mkdir()
    for name in (".clip.landmarks.part.npy", ".clip.landmarks.part.npy.smooth.npy", ".clip.csv.part",
                 ".clip_arkit.csv.part", ".clip_overlay.part.mp4", "clip.csv", "clip.npz"):
        (out / name).symlink_to(victim)
    (out / "clip_meshes").symlink_to(vdir)
    assert main(["track", str(clip6), "-o", str(out), "--overlay", "--mesh-every", "2", "-q"]) == 0
    assert victim.read_text() == "precious" and list(vdir.iterdir()) == []
    for name in ("clip.csv", "clip.npz", "clip_arkit.csv", "clip_overlay.mp4"):
        assert (out / name).is_file() and not (out / name).is_symlink()
    assert not (out / "clip_meshes").is_symlink()
    assert sorted(p.name for p in (out / "clip_meshes").iterdir()) == [f"frame_{f:06d}.obj" for f in (0, 2, 4)]
    assert len(rows(out / "clip.csv")) == 6


class _Interleaved:
    """Run A's landmark predictor: when A reaches its 4th frame, it runs all of run B (a concurrent
    run, interleaved deterministically)."""

    def __init__(self, predictor, run_b):
        self.predictor, self.run_b, self.k = predictor, run_b, 0

    def _tick(self):
        self.k += 1
        if self.k == 4:
            self.run_b()

    def track(self, frame):             # the single-face path (--max-faces 1)
        self._tick()
        return self.predictor.track(frame)

    def follow(self, frame):            # every face's path: one face followed, called once a frame
        self._tick()
        return self.predictor.follow(frame)

    def __getattr__(self, name):
        return getattr(self.predictor, name)


def test_two_runs_with_one_name_into_one_folder_do_not_mix(tmp_path, model):
    """Run B of another video with the same name into the same folder, in the middle of run A: both
    finish, and the outputs are one whole run's (A's, finished last: every frame's landmarks on
    A's side; CSV and NPZ agree)."""
    from lmfit3d.track import TrackOptions, make_predictor, track_video
    a = cut(tmp_path / "a" / "clip.mp4", 10, pad="right")        # face on the left half
    b = cut(tmp_path / "b" / "clip.mp4", 10, pad="left")         # face on the right half
    out = tmp_path / "out"
    out.mkdir()
    opt = TrackOptions(progress=False, iris=False)
    done = {}

    def run_b():
        done["b"] = track_video(b, out, opt, model, make_predictor(opt))
        assert (np.nanmean(np.load(out / "clip.npz")["mu"][:, :, 0], axis=1) > 224).all()
    sa = track_video(a, out, opt, model, _Interleaved(make_predictor(opt), run_b))
    assert done["b"].frames == 10 and sa.frames == 10 and sa.success == 10
    z = np.load(out / "clip.npz")
    assert (np.nanmean(z["mu"][:, :, 0], axis=1) < 224).all()
    x0 = np.array([float(x["x_0"]) for x in rows(out / "clip.csv")])
    np.testing.assert_allclose(x0, z["landmarks68"][:, 0, 0], rtol=1e-5)
    assert (x0 < 224).all() and len(rows(out / "clip_arkit.csv")) == 10
    assert leftovers(out) == []


@pytest.mark.parametrize("kind, names, extra", [
    ("fit", ["a/face.jpg", "b/face.jpg"], []),
    ("fit", ["face2.jpg", "face2.png"], []),
    ("fit", ["face.jpg", "face_face1.jpg"], []),
    ("track", ["x.mp4", "x_arkit.mp4"], []),
    ("track", ["a/clip.mp4", "b/clip.mp4"], ["--jobs", "2"]),
    ("track", ["x.mp4", "x_overlay.mp4"], ["--overlay"]),
])
def test_inputs_whose_outputs_collide_are_refused(tmp_path, capsys, clip6, kind, names, extra):
    """Two inputs that would write one output name (or an output over an input): exit 2, one line
    naming both, nothing written."""
    src = clip6 if kind == "track" else MEDIA / "obama.jpg"
    for n in names:
        (tmp_path / n).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src, tmp_path / n)
    before = sorted(tmp_path.rglob("*"))
    assert main([kind, *(str(tmp_path / n) for n in names), "-o", str(tmp_path), *extra]) == 2
    line = one_line(capsys.readouterr().err)
    assert Path(names[0]).name in line and Path(names[1]).name in line
    assert sorted(tmp_path.rglob("*")) == before


def test_rerun_replaces_the_whole_output_set(tmp_path, clip6):
    """A rerun with fewer frames, no overlay: its meshes only, the old overlay gone."""
    out = tmp_path / "out"
    assert main(["track", str(clip6), "-o", str(out), "--mesh-every", "2", "--overlay", "-q"]) == 0
    assert len(list((out / "clip_meshes").iterdir())) == 3 and (out / "clip_overlay.mp4").is_file()
    assert main(["track", str(clip6), "-o", str(out), "--mesh-every", "2", "--max-frames", "3", "-q"]) == 0
    assert sorted(p.name for p in (out / "clip_meshes").iterdir()) == ["frame_000000.obj", "frame_000002.obj"]
    assert not (out / "clip_overlay.mp4").exists() and len(rows(out / "clip.csv")) == 3
    assert np.load(out / "clip.npz")["expression"].shape[0] == 3
    assert sorted(p.name for p in out.iterdir()) == ["clip.csv", "clip.npz", "clip_arkit.csv", "clip_meshes"]


def test_photo_rerun_removes_faces_of_an_earlier_run(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    shutil.copy(MEDIA / "obama.jpg", tmp_path / "face.jpg")
    for stale in ("face_face1.json", "face_face1.obj", "face_face2.json", "face.ply"):
        (out / stale).write_text("{}")
    (out / "facebook.json").write_text("{}")                       # another name: kept
    assert main(["fit", str(tmp_path / "face.jpg"), "-o", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["face.json", "face.obj", "face_overlay.png", "facebook.json"]


def test_own_outputs_in_an_input_folder_are_skipped(tmp_path, clip6, capsys):
    """-o equal to the input folder: a rerun does not track its own NAME_overlay.mp4."""
    shutil.copy(clip6, tmp_path / "clip.mp4")
    assert main(["track", str(tmp_path), "-o", str(tmp_path), "--overlay", "-q", "--no-iris"]) == 0
    assert (tmp_path / "clip_overlay.mp4").is_file()
    assert main(["track", str(tmp_path), "-o", str(tmp_path), "--overlay", "-q", "--no-iris", "--force"]) == 0
    assert not (tmp_path / "clip_overlay.csv").exists()
    assert capsys.readouterr().out.count("clip.mp4: 6 frames") == 2


# ------------------------------------------------------------------------------------------------
# 4, 9: full disk, SIGTERM
# ------------------------------------------------------------------------------------------------

def _can_mount_tmpfs():
    try:
        return subprocess.run(["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt"],
                              capture_output=True, timeout=20).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def test_full_disk_is_one_line_and_leaves_nothing(tmp_path, clip6, capsys, monkeypatch):
    """A full disk: exit 2, one line naming the output folder and the reason; no temporary file left.
    On a real 64 KiB tmpfs where a user namespace can mount one; else ENOSPC simulated."""
    out = tmp_path / "out"
    out.mkdir()
    if _can_mount_tmpfs():
        script = (f"mount -t tmpfs -o size=64k tmpfs {out} && {sys.executable} -m lmfit3d.cli track {clip6} "
                  f"-o {out} -q; echo rc=$? >&2; ls -A {out} >&2")
        proc = subprocess.run(["unshare", "-rm", "sh", "-c", script], env=ENV, capture_output=True, text=True,
                              timeout=300)
        err = proc.stderr.strip().splitlines()
        assert err[-1] == "rc=2", proc.stderr                     # no SIGBUS (135), nothing listed after rc
        msg = one_line("\n".join(err[:-1]))
    else:
        import errno

        def full(fd, offset, length):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        monkeypatch.setattr(os, "posix_fallocate", full)
        assert main(["track", str(clip6), "-o", str(out), "-q"]) == 2
        msg = one_line(capsys.readouterr().err)
        assert leftovers(out) == [] and list(out.iterdir()) == []
    assert "No space left on device" in msg and str(out) in msg and "clip.mp4" in msg


@pytest.mark.parametrize("jobs", [1, 2])
def test_sigterm_removes_temporary_files(tmp_path, jobs):
    """SIGTERM during a run: exit 143 with one line, no temporary file left (workers too)."""
    clips = [cut(tmp_path / f"c{k}.mp4", 110) for k in range(jobs)]
    out = tmp_path / "out"
    proc = cli("track", *clips, "-o", out, "--overlay", "-q", "--jobs", jobs)
    t0 = time.time()
    while time.time() - t0 < 300 and not (out.is_dir() and len(leftovers(out)) >= jobs):
        time.sleep(0.2)
    assert proc.poll() is None, proc.communicate()
    time.sleep(0.5)                  # inside the run (110 frames take several seconds), not at its start
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert "terminated" in err and "Traceback" not in err
    assert leftovers(out) == []


# ------------------------------------------------------------------------------------------------
# 7, 8: exit codes and one-line messages; truncated videos
# ------------------------------------------------------------------------------------------------

def test_one_bad_input_is_exit_2_and_one_line(tmp_path, capsys):
    assert main(["track", str(tmp_path / "missing.mp4"), "-o", str(tmp_path), "-q"]) == 2
    assert one_line(capsys.readouterr().err).endswith("missing.mp4: file not found")
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"\x00\x01 not a video" * 100)
    assert main(["track", str(junk), "-o", str(tmp_path), "-q"]) == 2
    line = one_line(capsys.readouterr().err)
    assert "junk.mp4: cannot open as a video" in line and "ffmpeg version" not in line
    assert "configuration" not in line and "Invalid data" in line
    import imageio_ffmpeg
    sound = tmp_path / "sound.mp4"                      # a container with audio only
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-y", "-f", "lavfi", "-i", "sine", "-t", "0.5",
                    str(sound)], check=True)
    assert main(["track", str(sound), "-o", str(tmp_path), "-q"]) == 2
    assert one_line(capsys.readouterr().err).endswith("sound.mp4: cannot open as a video (no video stream)")
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"junk junk")
    assert main(["fit", str(bad), "-o", str(tmp_path)]) == 2
    line = one_line(capsys.readouterr().err)
    assert "bad.png: cannot read as an image" in line and "pip" not in line


@pytest.fixture
def landmarks_npz(model, rng, tmp_path):
    from lmfit3d.landmarks import load_landmark_set
    from lmfit3d.synthetic import make_frame, random_params
    ids = load_landmark_set("dense320")
    beta = rng.normal(size=model.n_identity)
    frames = [make_frame(model, random_params(model, rng, identity=beta), ids, rng, noise_px=0.3) for _ in range(3)]
    data = dict(mu=np.stack([f.mu for f in frames]), sigma=np.stack([f.sigma for f in frames]),
                landmark_set="dense320", image_size=np.array([512, 512]))
    return data


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d["mu"].__setitem__((0, 5), 1e300), "frame 0, landmark 5 at (1e+300, 1e+300) px"),
    (lambda d: d["sigma"].__setitem__((1, 7), 1e-300), "frame 1, landmark 7: 1e-300"),
    (lambda d: d.update(focal_px=np.array([900.0, 900.0])), "focal_px must be one number"),
    (lambda d: d.update(image_size=np.array([512, 512, 3])), "image_size must be (width, height) > 0, got [512"),
    (lambda d: d.update(mu=np.array([{"a": 1}], dtype=object)), "holds Python objects"),
], ids=["mu_1e300", "sigma_1e-300", "focal_shape", "image_size_shape", "pickle"])
def test_fit_landmarks_extreme_and_malformed_values(landmarks_npz, tmp_path, capsys, mutate, message):
    """One extreme value or a malformed key: exit 2, one line naming the file and what is wrong; no
    output (an extreme value used to pull the focal length and depth of every frame, status 1)."""
    mutate(landmarks_npz)
    src = tmp_path / "in.npz"
    np.savez(src, **landmarks_npz)
    out = tmp_path / "out.npz"
    assert main(["fit-landmarks", str(src), "-o", str(out)]) == 2
    line = one_line(capsys.readouterr().err)
    assert message in line and str(src) in line and "np.int64" not in line and "allow_pickle" not in line
    assert not out.exists() and leftovers(tmp_path) == []


def test_fit_landmarks_frame_without_landmarks_is_reported(landmarks_npz, tmp_path, capsys):
    landmarks_npz["mu"][1] = np.nan
    src = tmp_path / "in.npz"
    np.savez(src, **landmarks_npz)
    assert main(["fit-landmarks", str(src), "-o", str(tmp_path / "out.npz")]) == 1
    err = capsys.readouterr().err
    assert "1 of 3 frames could not be fitted" in err and "frame 1" in err
    assert np.load(tmp_path / "out.npz")["status"][1] < 0


def test_truncated_video_is_flagged_and_only_decoded_frames_count(tmp_path, capsys):
    full = cut(tmp_path / "full.mp4", 40, faststart=True)
    data = full.read_bytes()
    short = tmp_path / "short.mp4"
    short.write_bytes(data[:len(data) * 2 // 5])
    out = tmp_path / "out"
    assert main(["track", str(short), "-o", str(out), "-q", "--no-iris"]) == 0
    err = capsys.readouterr().err
    warning = one_line(err)
    assert warning.startswith("lmfit3d: warning:") and "short.mp4" in warning and "truncated" in warning
    z = np.load(out / "short.npz")
    n = len(rows(out / "short.csv"))
    assert 0 < n < 40 and int(z["decoded_frames"]) == n == z["success"].size and bool(z["truncated"])
    assert int(z["expected_frames"]) == 40
    assert main(["track", str(full), "-o", str(out), "-q", "--no-iris", "--max-frames", "3"]) == 0
    assert capsys.readouterr().err == "" and not bool(np.load(out / "full.npz")["truncated"])


def test_video_frames_are_counted_as_decoded():
    """short_hamilton_clip's video starts 0.85 s into the file: 275 frames are decoded (ffprobe's count),
    not 300 with 25 duplicates padding the start; a clean file has no problem."""
    from lmfit3d.media import VideoReader
    reader = VideoReader(MEDIA / "short_hamilton_clip.mp4")
    assert sum(1 for _ in reader) == 275 and reader.decoded == 275 and reader.problem is None


def test_photos_are_read_as_viewers_show_them(tmp_path):
    """CMYK, palette, 16-bit grey, alpha and EXIF-rotated files read as the same upright RGB photo."""
    from PIL import Image
    from lmfit3d.media import read_image
    src = shared_media_dir() / "obama.jpg"
    ref = read_image(src).astype(np.int64)
    im = Image.open(src)
    im.convert("CMYK").save(tmp_path / "cmyk.jpg", quality=95)
    im.convert("RGBA").save(tmp_path / "rgba.png")
    im.convert("P", palette=Image.Palette.ADAPTIVE, colors=256).save(tmp_path / "pal.png")
    turned = im.rotate(90, expand=True)        # stored turned, with the EXIF tag that turns it back
    exif = turned.getexif()
    exif[0x0112] = 6
    turned.save(tmp_path / "exif6.png", exif=exif)
    grey = np.asarray(im.convert("L")).astype(np.uint16) * 257
    Image.fromarray(grey).save(tmp_path / "grey16.png")
    for name, tol in (("cmyk.jpg", 12), ("rgba.png", 0), ("pal.png", 12), ("exif6.png", 0)):
        got = read_image(tmp_path / name)
        assert got.shape == ref.shape and got.dtype == np.uint8, name
        assert np.median(np.abs(got.astype(np.int64) - ref)) <= tol, name
    g16 = read_image(tmp_path / "grey16.png")
    assert np.abs(g16[..., 0].astype(np.int64) - grey // 257).max() <= 1     # scaled by 65535, not stretched


def test_phone_video_rotation_tag_gives_upright_frames(tmp_path, caplog):
    """A video stored landscape with a 90-degree display rotation (phones) is read upright, silently."""
    import imageio_ffmpeg
    from lmfit3d.media import VideoReader
    src = shared_media_dir() / "W040_level_3_happy_029.mp4"
    dst = tmp_path / "tagged.mp4"
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-y", "-display_rotation", "90", "-i", str(src),
                    "-frames:v", "3", "-c", "copy", str(dst)], check=True)
    plain, tagged = VideoReader(src), VideoReader(dst)
    assert tagged.size == plain.size[::-1]
    a, b = next(iter(plain)), next(iter(tagged))
    assert b.shape == (plain.size[0], plain.size[1], 3)
    assert min(np.abs(b.astype(int) - np.rot90(a, k).astype(int)).mean() for k in (1, 3)) < 3
    assert not [r for r in caplog.records if "frame size" in r.getMessage()]
