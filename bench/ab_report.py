"""Same-run speed comparison of this checkout against an earlier revision (pytest-benchmark medians).

This machine's speed drifts by 10 % and more between runs, so a "before" figure from another
session says little.  This script checks the base revision out into a temporary git worktree and
runs the same benchmarks on both sides in alternating rounds (base, this, base, this, ...; each
side in its own process with its own numba cache, warmed by an unmeasured first run), then reports
per benchmark the two medians and the median over rounds of the per-round ratio this / base.

Benchmarks (a selection of the pytest-benchmark suites in ``bench/``):

* ``fit``: ``test_bench_fit.py`` per-frame tracking solves (``Tracker.step`` with and without J^T J
  re-use, ``FrameProblem.solve``) on dense320 and dense703;
* ``track``: ``test_bench_track.py`` ``Tracker.step`` on the MediaPipe landmarks of the shared clip
  and ``track_video`` end to end on pre-decoded frames (per frame);
* ``capture``: ``test_bench_capture.py`` cost + gradient of the offline energy (60 frames x 4
  cameras), with the Gauss-Newton diagonal, and a 40-iteration L-BFGS solve.

A bench file missing from the base revision is copied into its worktree (it must only use API the
base has).

Usage::

    python bench/ab_report.py --base 8e954c6 [--rounds 3] [--suites fit track capture] [--own-bench capture] [--write-doc]

``--write-doc`` writes the table into the ``ab_report`` section of docs/results.md
(``bench/results_doc.py``).
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import results_doc  # noqa: E402
from lmfit3d.paths import default_ict_dir  # noqa: E402

SUITES = {
    "fit": ("bench/test_bench_fit.py", "test_step or test_lm_solve"),
    "track": ("bench/test_bench_track.py", "test_fit or (test_end_to_end and not decode)"),
    "capture": ("bench/test_bench_capture.py", ""),
}
THREADS = {"NUMBA_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _run(tree, suite, json_path=None):
    """One pytest-benchmark run of ``suite`` in checkout ``tree``; returns {name: median seconds}."""
    path, select = SUITES[suite]
    cmd = [sys.executable, "-m", "pytest", path, "-q", "-p", "no:cacheprovider"]
    if select:
        cmd += ["-k", select]
    cmd += ["--benchmark-json", str(json_path)] if json_path else ["--benchmark-disable"]
    # the base worktree lives in a temporary folder: point it at this checkout's shared data
    env = dict(os.environ, PYTHONPATH=str(tree), ICT_FACEKIT=str(default_ict_dir()), **THREADS)
    proc = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{suite} failed in {tree}:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    if not json_path:
        return {}
    data = json.loads(Path(json_path).read_text())
    return {b["fullname"].split("::")[-1]: b["stats"]["median"] for b in data["benchmarks"]}


def _worktree(base, where, own=()):
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(where), base], check=True,
                   capture_output=True)
    for name, suite in SUITES.items():     # one harness for both sides: this checkout's bench files,
        if name not in own:                # except suites whose API changed (the base keeps its own)
            shutil.copy(ROOT / suite[0], where / suite[0])


def compare(base, rounds, suites, own=()):
    """Alternating rounds; returns rows (suite, benchmark, base median s, this median s, ratio).
    ``own``: suites the base runs with its own bench file (same benchmark names, its own API)."""
    tmp = Path(tempfile.mkdtemp(prefix="lmfit3d_ab_"))
    base_tree = tmp / "base"
    _worktree(base, base_tree, own)
    try:
        for suite in suites:                # warm both numba caches (not measured)
            for tree in (base_tree, ROOT):
                _run(tree, suite)
        runs = {(s, side): [] for s in suites for side in ("base", "this")}
        for r in range(rounds):
            for suite in suites:
                for side, tree in (("base", base_tree), ("this", ROOT)):
                    runs[suite, side].append(_run(tree, suite, tmp / f"{suite}_{side}_{r}.json"))
                    print(f"round {r + 1}/{rounds} {suite} {side} done", file=sys.stderr)
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(base_tree)],
                       capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)
    rows = []
    for suite in suites:
        a, b = runs[suite, "base"], runs[suite, "this"]
        for name in sorted(set(a[0]) & set(b[0])):
            ratios = [br[name] / ar[name] for ar, br in zip(a, b)]
            rows.append((suite, name, statistics.median(ar[name] for ar in a),
                         statistics.median(br[name] for br in b), statistics.median(ratios), min(ratios),
                         max(ratios)))
    return rows


def table(rows, base, rounds):
    out = [f"Base `{base}` against this checkout, {rounds} alternating rounds, one thread; medians of "
           "pytest-benchmark medians; ratio = this / base, median over rounds (min-max).", "",
           "| suite | benchmark | base (ms) | this (ms) | ratio |", "|---|---|---:|---:|---:|"]
    for suite, name, a, b, r, lo, hi in rows:
        out.append(f"| {suite} | {name} | {a * 1e3:.3f} | {b * 1e3:.3f} | {r:.3f} ({lo:.3f}-{hi:.3f}) |")
    return "\n".join(out)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--base", required=True, help="git revision to compare against")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--suites", nargs="+", choices=sorted(SUITES), default=list(SUITES))
    ap.add_argument("--own-bench", nargs="+", choices=sorted(SUITES), default=[], metavar="SUITE",
                    help="suites the base runs with its own bench file (when the API they call changed)")
    results_doc.add_arguments(ap)
    args = ap.parse_args(argv)
    if args.rounds < 1:
        ap.error("--rounds must be >= 1")
    rows = compare(args.base, args.rounds, args.suites, args.own_bench)
    md = table(rows, args.base, args.rounds)
    print(md)
    results_doc.maybe_write(args, {"ab_report": results_doc.machine_line() + "\n\n" + md})
    return 0


if __name__ == "__main__":
    sys.exit(main())
