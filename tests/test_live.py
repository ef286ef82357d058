"""`lmfit3d live`: Live Link Face packets and VMC bundles received on loopback from a clip played in
real time, the recording, SIGTERM, and bad destinations / sources."""
import csv
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from lmfit3d.cli import main
from lmfit3d.outputs import ARKIT_NAMES, ARKIT_POSE
from lmfit3d.paths import REPO_ROOT, shared_media_dir
from lmfit3d.streams import (LIVELINK_NAMES, LIVELINK_SHAPES, decode_livelink, encode_livelink, livelink_values,
                             parse_destination)

CLIP = shared_media_dir() / "QoT0S2vu9m4_00002.mp4"        # 224 x 224, 25 fps, 55 frames
N = 20


def receiver():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    s.bind(("127.0.0.1", 0))
    s.setblocking(False)
    return s


def drain(sock):
    out = []
    while True:
        try:
            out.append(sock.recv(65536))
        except BlockingIOError:
            return out


def test_livelink_packet_round_trip_and_layout():
    rng = np.random.default_rng(3)
    w, ang = rng.uniform(0, 1, 52), rng.uniform(-40, 40, 9)
    vals = livelink_values(w, ang)
    pkt = encode_livelink(vals, 1234, 30.0, "face", "dev-1")
    # version, device id, subject, frame time, count, 61 big-endian floats
    assert pkt[0] == 6 and pkt[1:5] == (5).to_bytes(4, "big") and pkt[5:10] == b"dev-1"
    assert len(pkt) == 1 + 4 + 5 + 4 + 4 + 16 + 1 + 61 * 4
    d = decode_livelink(pkt)
    assert (d["version"], d["device_id"], d["subject"], d["frame"], d["fps"]) == (6, "dev-1", "face", 1234, 30.0)
    got = dict(zip(d["names"], d["values"]))
    assert set(d["names"]) == set(ARKIT_NAMES) | set(ARKIT_POSE) and len(d["names"]) == 61
    for i, name in enumerate(ARKIT_NAMES):                 # placed by name (JawLeft/Right order differs)
        assert got[name] == pytest.approx(w[i], abs=1e-6)
    assert LIVELINK_SHAPES.index("JawLeft") == 15 and LIVELINK_SHAPES.index("MouthLeft") == 21
    np.testing.assert_allclose([got[n] for n in ARKIT_POSE], ang / 180.0, atol=1e-6)
    with pytest.raises(ValueError, match="malformed|trailing"):
        decode_livelink(pkt[:-3])
    # the standalone Blender receiver (tools/) reads the same packet
    import importlib.util
    spec = importlib.util.spec_from_file_location("blender_livelink", REPO_ROOT / "tools" / "blender_livelink.py")
    blender = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(blender)
    assert tuple(blender.SHAPES) == LIVELINK_NAMES
    np.testing.assert_allclose([blender.decode(pkt)[n] for n in LIVELINK_NAMES], vals, atol=1e-7)


@pytest.mark.parametrize("text, msg", [("localhost:0", "out of range"), ("localhost:65536", "out of range"),
                                       ("localhost:port", "must be a number"),
                                       ("no-such-host.invalid:9000", "cannot resolve")])
def test_bad_destination(text, msg):
    with pytest.raises(ValueError, match=msg):
        parse_destination(text, 11111, "--livelink")
    assert parse_destination("127.0.0.1", 11111, "--livelink")[:2] == ("127.0.0.1", 11111)


def test_live_sends_livelink_and_vmc_and_records(tmp_path, capsys):
    pytest.importorskip("pythonosc")
    from pythonosc.osc_bundle import OscBundle
    ll, vmc = receiver(), receiver()
    rc = main(["live", "--source", str(CLIP), "--max-frames", str(N), "-q", "--subject", "tester",
               "--livelink", f"127.0.0.1:{ll.getsockname()[1]}", "--vmc", f"127.0.0.1:{vmc.getsockname()[1]}",
               "--record", str(tmp_path / "rec")])
    assert rc == 0, capsys.readouterr().err
    time.sleep(0.2)
    packets, bundles = drain(ll), drain(vmc)
    with open(tmp_path / "rec" / f"{CLIP.stem}.csv", newline="") as fh:
        table = list(csv.DictReader(fh))
    ok = [r for r in table if r["success"] == "1"]
    assert 0 < len(table) <= N and len(ok) >= len(table) - 1
    # one packet and one bundle per tracked frame with a face
    assert len(packets) == len(ok) and len(bundles) == len(ok)
    frames = []
    for p in packets:
        d = decode_livelink(p)
        assert d["subject"] == "tester" and d["fps"] == 25.0 and d["names"] == LIVELINK_NAMES
        assert np.all((d["values"][:52] >= 0) & (d["values"][:52] <= 1.5)) and np.all(np.abs(d["values"][52:]) < 1)
        frames.append(d["frame"])
    assert frames == sorted(frames) and frames == [int(r["frame"]) for r in ok]
    assert max(decode_livelink(p)["values"][LIVELINK_NAMES.index("JawOpen")] for p in packets) > 0.01
    for b in bundles:
        msgs = [m for m in OscBundle(b)]
        addr = [m.address for m in msgs]
        assert addr[-1] == "/VMC/Ext/Blend/Apply" and "/VMC/Ext/Root/Pos" in addr
        blends = {m.params[0]: m.params[1] for m in msgs if m.address == "/VMC/Ext/Blend/Val"}
        assert set(blends) == set(ARKIT_NAMES) and all(0 <= v <= 1.5 for v in blends.values())
        bones = {m.params[0]: m.params[1:] for m in msgs if m.address == "/VMC/Ext/Bone/Pos"}
        assert set(bones) == {"Head", "LeftEye", "RightEye"}
        assert all(abs(np.linalg.norm(q[3:]) - 1) < 1e-5 for q in bones.values())
    # the recording: track's layout, consistent between files
    z = np.load(tmp_path / "rec" / f"{CLIP.stem}.npz")
    assert z["frame_index"].tolist() == [int(r["frame"]) for r in table]
    assert z["mu"].shape == (len(table), 470, 2) and z["expression"].shape == (len(table), 53)
    with open(tmp_path / "rec" / f"{CLIP.stem}_arkit.csv", newline="") as fh:
        assert len(list(csv.reader(fh))) == len(table) + 1
    assert not [p for p in (tmp_path / "rec").iterdir() if ".part" in p.name]


def test_sigterm_leaves_a_complete_recording(tmp_path):
    out = tmp_path / "rec"
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    rx.settimeout(120)
    proc = subprocess.Popen([sys.executable, "-m", "lmfit3d.cli", "live", "--source", str(CLIP), "-q",
                             "--record", str(out), "--livelink", f"127.0.0.1:{rx.getsockname()[1]}"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        rx.recv(4096)                    # the first tracked frame has been sent
        time.sleep(0.3)                  # a little more real-time playback (the clip lasts 2.2 s)
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
        rx.close()
    assert proc.returncode == 0, stderr.decode()
    assert b"terminated" in stdout
    z = np.load(out / f"{CLIP.stem}.npz")
    n = z["frame_index"].size
    with open(out / f"{CLIP.stem}.csv", newline="") as fh:
        assert len(list(csv.reader(fh))) == n + 1
    assert 0 < n < 55 and not [p for p in out.iterdir() if ".part" in p.name]


def test_stalled_source_is_one_line_error(tmp_path, capsys):
    # a y4m stream through a pipe that delivers ten frames and then nothing: an error, not a hang
    if not hasattr(os, "mkfifo"):
        pytest.skip("needs a named pipe")
    fifo = tmp_path / "cam.y4m"
    os.mkfifo(fifo)
    w, h = 64, 48
    frame = b"FRAME\n" + bytes(w * h * 3 // 2)
    import threading

    def feed(stop):
        with open(fifo, "wb") as fh:
            fh.write(f"YUV4MPEG2 W{w} H{h} F25:1 Ip A1:1 C420jpeg\n".encode() + frame * 10)
            fh.flush()
            stop.wait(20)

    stop = threading.Event()
    threading.Thread(target=feed, args=(stop,), daemon=True).start()
    from lmfit3d.live import LiveSource
    src = LiveSource(source=str(fifo), pace=True, stall_s=1.0)
    src.kind = "stream"                       # a pipe: not paced by its frame rate
    got = []
    t0 = time.time()
    with pytest.raises(ValueError, match="no frame for 1 s"):
        for f, img, _ in src:
            got.append(img.shape)
    stop.set()
    assert 1 <= len(got) <= 10 and set(got) == {(h, w, 3)} and time.time() - t0 < 10


def test_neutral_calibration_removes_the_resting_face():
    from lmfit3d.live import Neutral
    rng = np.random.default_rng(7)
    rest = rng.uniform(0, 0.3, 52)
    cal = Neutral(1.0)
    for t in np.arange(0, 1.0, 0.1):                   # the first second: passed through, averaged
        np.testing.assert_allclose(cal(rest + 0.01 * np.sin(t), t), rest + 0.01 * np.sin(t))
    np.testing.assert_allclose(cal(rest, 1.2), 0.0, atol=0.02)
    full = cal(np.ones(52), 1.3)
    np.testing.assert_allclose(full, 1.0)
    half = cal(rest + 0.5 * (1 - rest), 1.4)           # rescaled so that the range stays 0..1
    assert np.all(np.abs(half - 0.5) < 0.03)


@pytest.mark.parametrize("args, msg", [
    (["--source", "/nonexistent/clip.mp4"], "file not found"),
    (["--source", str(CLIP), "--livelink", "localhost:99999"], "out of range"),
    (["--source", str(CLIP), "--vmc", "no-such-host.invalid"], "cannot resolve"),
    (["--source", str(CLIP), "--identity", "/nonexistent.npz"], "not found"),
    ([], "one of the arguments --camera --source is required"),
])
def test_bad_input_one_line_exit_2(args, msg, capsys):
    assert main(["live", "-q"] + args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("lmfit3d: error:") and msg in err and "\n" not in err


def test_background_refit_falls_back_to_the_loop_when_the_worker_fails(model):
    """A refit job that fails (a dead worker) puts the refits back in the capture loop."""
    from concurrent.futures import Future

    from lmfit3d.fit import Tracker
    from lmfit3d.live import BackgroundRefit
    from lmfit3d.synthetic import make_frame, random_params
    from lmfit3d.landmarks import load_landmark_set
    rng = np.random.default_rng(5)
    ids = np.asarray(load_landmark_set("ibug68"))
    tr = Tracker(model, ids, (512, 512))
    bg = BackgroundRefit.__new__(BackgroundRefit)          # no process: a job that has failed
    bg.tracker, bg.refits, bg.failed = tr, 0, False
    tr.refit_in_step = False
    fr = make_frame(model, random_params(model, rng), ids, rng, noise_px=0.3, face_px=250, image_px=512)
    tr.step(fr.mu, np.ones(ids.size))
    assert tr.refit_pending and len(tr.keyframes) == 1 and not tr.identity.any()
    bg.job = Future()
    bg.job.set_exception(RuntimeError("worker died"))
    bg.poll()
    assert bg.failed and tr.refit_in_step and not tr.refit_pending
    assert np.abs(tr.identity).max() > 0                   # the waiting keyframe was refitted in the loop
