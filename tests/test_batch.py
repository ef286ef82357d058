"""Resumable batches (issue 21): the manifest and summary.csv, inputs from folders, patterns and lists,
reruns, and Dask: a scheduler and two workers on 127.0.0.1 with one worker killed mid-video."""
import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from lmfit3d.cli import main
from lmfit3d.dataset import collect_inputs
from lmfit3d.manifest import MANIFEST_NAME, SUMMARY_NAME
from lmfit3d.media import VIDEO_EXTENSIONS
from lmfit3d.paths import shared_media_dir, sweep_work_dirs, work_dir
from test_runs import ENV, cut, leftovers

MEDIA = shared_media_dir()


def summary(out):
    with open(Path(out) / SUMMARY_NAME, newline="") as fh:
        return {Path(r["input"]).name: r for r in csv.DictReader(fh)}


def mtimes(out):
    return {p.name: p.stat().st_mtime_ns for p in Path(out).iterdir() if p.name not in (SUMMARY_NAME, MANIFEST_NAME)}


def corrupt(path):
    Path(path).write_bytes(b"\x00\x01 not a video" * 100)
    return Path(path)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """Two 6-frame clips and a corrupt file."""
    d = tmp_path_factory.mktemp("batch")
    cut(d / "a.mp4", 6)
    cut(d / "b.mp4", 7)
    corrupt(d / "bad.mp4")
    return d


# ------------------------------------------------------------------------------------------------
# inputs
# ------------------------------------------------------------------------------------------------

def test_inputs_from_folders_patterns_and_lists(tmp_path):
    for rel in ("x/1.mp4", "x/2.mp4", "x/deep/3.mp4", "y/4.mov", "y/notes.txt"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"v")
    files, batch = collect_inputs([tmp_path / "x/1.mp4"], None, VIDEO_EXTENSIONS)
    assert files == [tmp_path / "x/1.mp4"] and not batch                 # one file: a plain run
    files, batch = collect_inputs([tmp_path / "x"], None, VIDEO_EXTENSIONS)
    assert [f.name for f in files] == ["1.mp4", "2.mp4"] and batch      # a folder: a batch, even of one
    files, _ = collect_inputs([str(tmp_path / "x/**/*.mp4"), tmp_path / "x/1.mp4"], None, VIDEO_EXTENSIONS)
    assert [f.name for f in files] == ["1.mp4", "2.mp4", "3.mp4"]       # recursive pattern; 1.mp4 once
    lst = tmp_path / "y" / "list.txt"
    lst.write_text("# the dataset\n4.mov\n\n../x/*.mp4\n" + str(tmp_path / "missing.mp4") + "\n")
    files, batch = collect_inputs([], lst, VIDEO_EXTENSIONS)
    assert [f.name for f in files] == ["4.mov", "1.mp4", "2.mp4", "missing.mp4"] and batch
    with pytest.raises(ValueError, match=r"list.txt, line 2: https://example.com/v.mp4: URLs are not supported"):
        lst.write_text("# x\nhttps://example.com/v.mp4\n")
        collect_inputs([], lst, VIDEO_EXTENSIONS)
    with pytest.raises(ValueError, match="URLs are not supported"):
        collect_inputs(["s3://bucket/v.mp4"], None, VIDEO_EXTENSIONS)
    with pytest.raises(ValueError, match=r"the pattern matches no file with extension \.mp4"):
        collect_inputs([str(tmp_path / "y/*.mp4")], None, VIDEO_EXTENSIONS)


def test_batch_file_names_are_reserved(tmp_path, capsys, clip6):
    shutil.copy(clip6, tmp_path / "summary.mp4")
    shutil.copy(clip6, tmp_path / "other.mp4")
    assert main(["track", str(tmp_path), "-o", str(tmp_path / "out")]) == 2
    assert "summary.mp4 would write" in capsys.readouterr().err and not (tmp_path / "out" / "summary.csv").exists()


@pytest.fixture(scope="module")
def clip6(tmp_path_factory):
    return cut(tmp_path_factory.mktemp("clips") / "clip.mp4", 6)


# ------------------------------------------------------------------------------------------------
# the manifest: reruns skip, changed inputs / options / lost outputs run again, --force, --retry-failed
# ------------------------------------------------------------------------------------------------

def test_rerun_skips_what_is_done_and_runs_what_changed(tmp_path, folder, capsys):
    src = tmp_path / "in"
    shutil.copytree(folder, src)
    out = tmp_path / "out"
    args = ["track", str(src), "-o", str(out), "-q", "--no-iris"]
    assert main(args) == 1
    s = summary(out)
    assert [s[n]["status"] for n in ("a.mp4", "b.mp4", "bad.mp4")] == ["done", "done", "failed"]
    assert (s["a.mp4"]["frames"], s["b.mp4"]["frames"], s["a.mp4"]["success_rate"]) == ("6", "7", "1.0")
    assert s["a.mp4"]["faces"] == "1" and s["bad.mp4"]["faces"] == ""
    assert "cannot open as a video" in s["bad.mp4"]["error"] and s["bad.mp4"]["this_run"] == "1"
    assert float(s["a.mp4"]["fps"]) > 0 and float(s["a.mp4"]["seconds"]) > 0
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [f"{n}{e}" for n in "ab" for e in (".csv", ".npz", "_arkit.csv")] + [MANIFEST_NAME, SUMMARY_NAME])
    capsys.readouterr()
    before = mtimes(out)

    assert main(args) == 1                                          # everything skipped, the failure stands
    cap = capsys.readouterr()
    assert cap.out == "" and "2 of 3 inputs done earlier" in cap.err and "1 of 3 inputs failed earlier" in cap.err
    assert mtimes(out) == before and {r["this_run"] for r in summary(out).values()} == {"0"}

    assert main(args + ["--retry-failed"]) == 1                     # only the failed one runs again
    assert "bad.mp4" in capsys.readouterr().err and mtimes(out) == before

    cut(src / "bad.mp4", 5)                                         # the file is mended: it runs by itself
    (out / "a.npz").unlink()                                        # an output lost: a runs again
    assert main(args) == 0
    ran = capsys.readouterr().out
    assert "a.mp4: 6 frames" in ran and "bad.mp4: 5 frames" in ran and "b.mp4" not in ran
    assert mtimes(out)["b.npz"] == before["b.npz"]
    assert {r["status"] for r in summary(out).values()} == {"done"}

    assert main(args + ["--max-frames", "3"]) == 0                  # other options: everything runs
    assert capsys.readouterr().out.count(": 3 frames,") == 3
    assert main(args + ["--max-frames", "3", "--force"]) == 0
    assert capsys.readouterr().out.count(": 3 frames,") == 3
    records = json.loads((out / MANIFEST_NAME).read_text())["inputs"]
    assert len(records) == 3 and {r["status"] for r in records.values()} == {"done"}
    assert leftovers(out) == []


def test_unreadable_manifest_is_one_line(tmp_path, folder, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / MANIFEST_NAME).write_text("{not json")
    assert main(["track", str(folder), "-o", str(out), "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and MANIFEST_NAME in err and "not a readable lmfit3d manifest" in err


# ------------------------------------------------------------------------------------------------
# private folders of runs that died
# ------------------------------------------------------------------------------------------------

def test_folders_of_dead_runs_are_swept_and_live_ones_kept(tmp_path):
    code = ("import sys, time\nfrom lmfit3d.paths import work_dir\n"
            f"with work_dir({str(tmp_path)!r}, 'dead') as w:\n    print(w, flush=True)\n    time.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], env=ENV, stdout=subprocess.PIPE, text=True)
    dead = Path(proc.stdout.readline().strip())
    (dead / "landmarks.npy").write_bytes(b"x" * 100)
    with work_dir(tmp_path, "live") as live:
        assert sweep_work_dirs(tmp_path, min_age_s=0.0) == []       # both owners alive: both kept
        proc.send_signal(signal.SIGKILL)                            # the owner dies without cleaning up
        proc.wait(30)
        assert dead.is_dir()
        assert sweep_work_dirs(tmp_path, min_age_s=30.0) == []      # too young to judge
        assert sweep_work_dirs(tmp_path, min_age_s=0.0) == [dead.name]
        assert live.is_dir() and not dead.exists()
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------------------------
# Dask
# ------------------------------------------------------------------------------------------------

def test_dask_address_parsing():
    from lmfit3d.cluster import parse_dask
    assert parse_dask("local:3") == ("local", 3)
    assert parse_dask("10.0.0.5:8786") == ("scheduler", "tcp://10.0.0.5:8786")
    assert parse_dask("tls://sched:8786") == ("scheduler", "tls://sched:8786")
    for bad in ("local:0", "local", "local:two", ""):
        with pytest.raises(ValueError, match="--dask"):
            parse_dask(bad)


def test_dask_missing_or_failing_is_one_line(monkeypatch, folder, tmp_path, capsys):
    from lmfit3d import cluster
    distributed = pytest.importorskip("distributed", reason="the cluster extra (pip install 'lmfit3d[cluster]')")
    line = cluster._failure(distributed, "x.mp4", distributed.KilledWorker("k", None, 3))
    assert line == "x.mp4: the Dask workers running it died 4 times (killed, or out of memory)"
    monkeypatch.setitem(sys.modules, "distributed", None)             # the extra not installed
    assert main(["track", str(folder), "-o", str(tmp_path / "out"), "--dask", "local:2"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith('--dask needs dask.distributed: pip install "lmfit3d[cluster]" '
                        '(or pip install "dask[distributed]")') and len(err.splitlines()) == 1
    assert not (tmp_path / "out").exists()


@pytest.fixture
def cluster(tmp_path):
    """A scheduler and two single-thread workers (no nanny: a killed worker stays dead) on 127.0.0.1."""
    pytest.importorskip("distributed", reason="the cluster extra (pip install 'lmfit3d[cluster]')")
    sched_file = tmp_path / "scheduler.json"
    env = dict(ENV, OMP_NUM_THREADS="1", NUMBA_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    quiet = dict(env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    procs = [subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1",
                               "--port", "0", "--no-dashboard", "--scheduler-file", str(sched_file)], **quiet)]
    try:
        t0 = time.time()
        while not sched_file.is_file() and time.time() - t0 < 60:
            time.sleep(0.1)
        for _ in range(2):
            procs.append(subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_worker", "--scheduler-file",
                                           str(sched_file), "--nthreads", "1", "--no-nanny", "--no-dashboard",
                                           "--host", "127.0.0.1"], **quiet))
        from distributed import Client
        with Client(scheduler_file=str(sched_file), timeout="60s", set_as_default=False) as client:
            client.wait_for_workers(2, timeout=120)
            address = client.scheduler.address
        yield address, procs[1:]
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                p.terminate()
        for p in procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()


def _kill_a_busy_worker(workers, out, killed, stop):
    """Watch the workers: SIGKILL the first found with a file of a private run folder in ``out`` open
    (a video half done); record its pid and the folder."""
    import psutil
    while not stop.is_set():
        for w in workers:
            try:
                files = [f.path for f in psutil.Process(w.pid).open_files()] + \
                        [m.path for m in psutil.Process(w.pid).memory_maps()]
            except psutil.Error:
                continue
            busy = [f for f in files if f.startswith(str(out)) and ".part" in f]
            if busy:
                os.kill(w.pid, signal.SIGKILL)
                killed.update(pid=w.pid, worker=w, file=busy[0])
                return
        time.sleep(0.01)


def test_killing_a_worker_loses_no_video(tmp_path, cluster):
    """Four clips and a corrupt file on two workers; one worker killed mid-video: its video runs again
    on the other, every clip is done once with the outputs of --jobs 1, the corrupt one is in the
    summary, exit 1, nothing partial left; a second run skips everything."""
    address, workers = cluster
    src = tmp_path / "clips"
    for k in range(4):
        cut(src / f"c{k}.mp4", 16 + 2 * k)
    corrupt(src / "broken.mp4")
    ref, out = tmp_path / "ref", tmp_path / "out"
    assert main(["track", str(src), "-o", str(ref), "-q", "--jobs", "1"]) == 1

    killed, stop = {}, threading.Event()
    watcher = threading.Thread(target=_kill_a_busy_worker, args=(workers, out, killed, stop), daemon=True)
    watcher.start()
    try:
        assert main(["track", str(src), "-o", str(out), "-q", "--dask", address]) == 1
    finally:
        stop.set()
        watcher.join(10)
    assert killed, "no worker was caught mid-video"
    assert killed["worker"].wait(10) == -signal.SIGKILL
    s = summary(out)
    assert sorted(s) == ["broken.mp4", "c0.mp4", "c1.mp4", "c2.mp4", "c3.mp4"]
    assert all(s[f"c{k}.mp4"]["status"] == "done" and s[f"c{k}.mp4"]["frames"] == str(16 + 2 * k) for k in range(4))
    assert s["broken.mp4"]["status"] == "failed" and "cannot open as a video" in s["broken.mp4"]["error"]
    expected = sorted(f"c{k}{e}" for k in range(4) for e in (".csv", ".npz", "_arkit.csv"))
    assert sorted(p.name for p in out.iterdir()) == sorted(expected + [MANIFEST_NAME, SUMMARY_NAME])
    assert leftovers(out) == []                                      # the killed run's folder is gone
    for k in range(4):
        a, b = np.load(ref / f"c{k}.npz"), np.load(out / f"c{k}.npz")
        assert a.files == b.files
        for key in a.files:
            if a[key].dtype.kind in "fcbiu":
                assert np.allclose(a[key], b[key], equal_nan=True), (k, key)
        assert (ref / f"c{k}.csv").read_text() == (out / f"c{k}.csv").read_text()

    before = mtimes(out)
    assert main(["track", str(src), "-o", str(out), "-q", "--dask", address]) == 1
    assert mtimes(out) == before and {r["this_run"] for r in summary(out).values()} == {"0"}

    from lmfit3d.cluster import run_dask                              # the surviving worker: no compilation
    from lmfit3d.track import TrackOptions
    stats = []
    res = run_dask("video", [src / "c0.mp4", src / "c1.mp4"], tmp_path / "again", TrackOptions(progress=False),
                   address, stats=stats)
    assert [r[2] for r in res] == [None, None] and len(stats) == 2
    assert {s["pid"] for s in stats} != {killed["pid"]} and all(s["compiled"] == 0 for s in stats), stats


def test_fit_photo_folder_on_a_local_cluster(tmp_path, capsys):
    """`fit DIR --dask local:2`: photos as tasks, a bad one in the summary; --retry-failed (here
    without Dask: the manifest is the same) runs only that one."""
    pytest.importorskip("distributed", reason="the cluster extra (pip install 'lmfit3d[cluster]')")
    src = tmp_path / "photos"
    src.mkdir()
    for n in ("obama.jpg", "einstein.jpg"):
        shutil.copy(MEDIA / n, src / n)
    (src / "bad.png").write_bytes(b"junk junk")
    out = tmp_path / "out"
    assert main(["fit", str(src), "-o", str(out), "--max-faces", "1", "--dask", "local:2"]) == 1
    s = summary(out)
    assert [s[n]["status"] for n in ("bad.png", "einstein.jpg", "obama.jpg")] == ["failed", "done", "done"]
    assert s["obama.jpg"]["faces"] == "1" and 0 < float(s["obama.jpg"]["fit_rms_px"]) < 5
    assert "cannot read as an image" in s["bad.png"]["error"]
    assert {"obama.json", "obama.obj", "obama_overlay.png", "einstein.json"} <= {p.name for p in out.iterdir()}
    capsys.readouterr()
    before = mtimes(out)
    assert main(["fit", str(src), "-o", str(out), "--max-faces", "1", "--retry-failed"]) == 1
    cap = capsys.readouterr()
    assert "2 of 3 inputs done earlier" in cap.err and "bad.png: cannot read as an image" in cap.err
    assert mtimes(out) == before and summary(out)["bad.png"]["this_run"] == "1"
    assert leftovers(out) == []


def _worker_settings():
    import dask
    return (os.environ.get("MALLOC_TRIM_THRESHOLD_"), dask.config.get("distributed.worker.profile.enabled"),
            dask.config.get("distributed.admin.tick.interval"))


def test_local_cluster_workers_run_like_jobs_processes(monkeypatch):
    """`--dask local:N` workers keep glibc's allocator defaults (Dask would set MALLOC_TRIM_THRESHOLD_,
    ~30 % more CPU per video) and run no profiler; a value in the environment still reaches them."""
    distributed = pytest.importorskip("distributed", reason="the cluster extra (pip install 'lmfit3d[cluster]')")
    from lmfit3d.cluster import _connect
    seen = []
    for value in (None, "262144"):
        if value is None:
            monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_", raising=False)
        else:
            monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", value)
        client, cluster = _connect(distributed, "local:1")
        try:
            seen += list(client.run(_worker_settings).values())
        finally:
            client.close()
            cluster.close()
    assert seen == [(None, False, "1s"), ("262144", False, "1s")]


def test_a_process_reuses_its_predictor_and_context_with_fresh_results(tmp_path):
    """Each worker process builds one predictor and one fit context and keeps them for its next
    inputs; the outputs are those of a fresh predictor (its tracking state is reset per input)."""
    from dataclasses import fields

    from lmfit3d import batch
    from lmfit3d.track import PREDICTOR_FIELDS, TrackOptions
    assert set(PREDICTOR_FIELDS) <= {f.name for f in fields(TrackOptions)}
    inputs = [cut(tmp_path / "a.mp4", 6, pad="left"), cut(tmp_path / "b.mp4", 6, pad="right"),
              MEDIA / "two_people.jpg", cut(tmp_path / "c.mp4", 5)]
    opt = TrackOptions(progress=False)
    arrays, kept = {}, []
    for mode in ("fresh", "reused"):
        out = tmp_path / mode
        out.mkdir()
        for p in inputs:
            if mode == "fresh":
                batch._REUSED[0] = None
            kind = "image" if p.suffix == ".jpg" else "video"
            path, res, err = batch._run_one(kind, p, out, opt, None)
            assert err is None and res is not None
            kept.append(batch._REUSED[0][1:])
        arrays[mode] = {p.name: dict(np.load(p)) for p in out.glob("*.npz")}
        arrays[mode]["photo"] = json.loads((out / "two_people.json").read_text())
    reused = kept[len(inputs):]
    assert all(r[0] is reused[0][0] and r[1] is reused[0][1] for r in reused)      # one of each, kept
    assert len({id(r[0]) for r in kept[:len(inputs)]}) == len(inputs)               # a new one each
    assert sorted(arrays["fresh"]) == sorted(arrays["reused"]) == ["a.npz", "b.npz", "c.npz", "photo"]
    assert arrays["fresh"]["photo"] == arrays["reused"]["photo"]
    for name in ("a.npz", "b.npz", "c.npz"):
        fresh, again = arrays["fresh"][name], arrays["reused"][name]
        assert sorted(fresh) == sorted(again)
        for k in fresh:
            np.testing.assert_array_equal(fresh[k], again[k], err_msg=f"{name} {k}")
    batch._REUSED[0] = None
