"""Run the model benchmarks and print a markdown table for docs/results.md.

Usage::

    python bench/report.py [extra pytest arguments]
    python bench/report.py --write-doc    # also write the table into docs/results.md (section "report")

Runs ``bench/test_bench_model.py`` under pytest-benchmark (one thread, ``--benchmark-json`` to a
temporary file), then measures start-up costs in fresh interpreters:

* ``python -X importtime -c "import lmfit3d"`` (and ``lmfit3d.skinning``, which loads numba):
  the cumulative import time of the package, median of 5 runs;
* warm start: a fresh process imports ``lmfit3d.skinning``, loads the model and runs
  ``evaluate_points`` once on ``dense320`` with numba's on-disk cache already filled (one
  unmeasured run fills it), median of 5 runs.

Prints one markdown table of medians with the goals and the numba / NumPy ratios of the
baselines measured in the same run; with ``--write-doc`` the machine line and the table replace the
``report`` section of docs/results.md (``bench/results_doc.py``).
"""
import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import results_doc

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
THREAD_ENV = {"NUMBA_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1",
              "MKL_NUM_THREADS": "1"}

ROWS = [  # (group, impl, label, baseline (group, impl) for the ratio column or None for NumPy)
    ("points_jacobian-dense320", "numba", "landmark vertices + dense pose/expression Jacobian, dense320 "
     "(pose_chain + points_jacobian, one vertex at a time)", None),
    ("points_jacobian-dense703", "numba", "landmark vertices + dense pose/expression Jacobian, dense703 "
     "(pose_chain + points_jacobian, one vertex at a time)", None),
    ("table_jacobian-dense320", "numba", "landmark vertices + pose Jacobian + R_root M (factor of the "
     "expression/identity Jacobian), dense320 (table_points_jacobian: pose chain included)",
     ("points_jacobian-dense320", "numba")),
    ("table_jacobian-dense703", "numba", "the same, dense703", ("points_jacobian-dense703", "numba")),
    ("table_jacobian-dense320", "numba+explicit", "the same + explicit sparse expression Jacobian, dense320 "
     "(+ expression_jacobian)", ("points_jacobian-dense320", "numba")),
    ("table_jacobian-dense703", "numba+explicit", "the same + explicit sparse expression Jacobian, dense703",
     ("points_jacobian-dense703", "numba")),
    ("full_mesh", "numba", "full mesh: template T(beta, psi) + LBS, 26,719 vertices (evaluate_mesh)", None),
    ("skinning", "numba", "LBS kernel alone on a precomputed template (skin_mesh)", None),
    ("load", "numpy", "model load from the cache file (load_model, in-process cache cleared)", None),
]

WARM_START = r"""
import json, time
t0 = time.perf_counter()
import lmfit3d.skinning as sk
t1 = time.perf_counter()
from lmfit3d.landmarks import load_landmark_set
from lmfit3d.model import Params, load_model
model = load_model()
t2 = time.perf_counter()
x, jac = sk.evaluate_points(model, Params.zeros(model), load_landmark_set("dense320"))
t3 = time.perf_counter()
assert jac.shape == (320, 3, 71)
print(json.dumps({"import": t1 - t0, "load": t2 - t1, "first_eval": t3 - t2, "total": t3 - t0}))
"""


def fmt_time(seconds):
    if seconds < 1e-3:
        return f"{seconds * 1e6:.1f} us"
    if seconds < 1.0:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds:.2f} s"


def _env():
    env = dict(os.environ)
    env.update(THREAD_ENV)
    return env


def run_benchmarks(extra_args):
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "bench.json"
        cmd = [sys.executable, "-m", "pytest", str(BENCH_DIR / "test_bench_model.py"), "-q", "-o", "addopts=",
               "-p", "no:cacheprovider", "--benchmark-only", f"--benchmark-json={out}", *extra_args]
        print(f"running: {' '.join(cmd)}", file=sys.stderr, flush=True)
        proc = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True)
        if proc.returncode != 0 or not out.is_file():
            sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-4000:])
            raise SystemExit(f"report.py: benchmark run failed (exit status {proc.returncode})")
        return json.loads(out.read_text())


def import_time_us(module, runs=5):
    """Median cumulative ``-X importtime`` of ``module`` (us) over fresh interpreters."""
    samples = []
    for _ in range(runs):
        proc = subprocess.run([sys.executable, "-X", "importtime", "-c", f"import {module}"],
                              cwd=REPO, env=_env(), capture_output=True, text=True, check=True)
        for line in proc.stderr.splitlines():
            parts = [p.strip() for p in line.removeprefix("import time:").split("|")]
            if len(parts) == 3 and parts[2] == module:
                samples.append(int(parts[1]))
    if not samples:
        raise SystemExit(f"report.py: no importtime line for {module}")
    return statistics.median(samples)


def warm_start(runs=5):
    """Median (over fresh processes) of the in-process phases of WARM_START, plus process wall time."""
    import time

    subprocess.run([sys.executable, "-c", WARM_START], cwd=REPO, env=_env(), check=True,
                   capture_output=True)  # fills numba's cache if it is cold
    phases, walls = [], []
    for _ in range(runs):
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-c", WARM_START], cwd=REPO, env=_env(), check=True,
                              capture_output=True, text=True)
        walls.append(time.perf_counter() - t0)
        phases.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    med = {k: statistics.median(p[k] for p in phases) for k in phases[0]}
    med["wall"] = statistics.median(walls)
    return med


def table(bench, imports, warm):
    by_group = {}
    for b in bench["benchmarks"]:
        by_group.setdefault(b["group"], {})[b["extra_info"].get("impl", "numba")] = b
    lines = ["| measurement | median | goal | ratio to the baseline in the same run |",
             "| --- | ---: | ---: | ---: |"]
    for group, impl, label, baseline in ROWS:
        main = by_group.get(group, {}).get(impl)
        if main is None:
            lines.append(f"| {label} | (not run) | | |")
            continue
        med = main["stats"]["median"]
        goal_us = main["extra_info"].get("goal_us")
        goal = ""
        if goal_us is not None:
            goal_txt = f"{goal_us:g} us" if goal_us < 1000 else f"{goal_us / 1000:g} ms"
            goal = f"<= {goal_txt} ({'met' if med <= goal_us * 1e-6 else 'not met'})"
        ratio = ""
        base = (by_group.get(group, {}).get("numpy") if baseline is None
                else by_group.get(baseline[0], {}).get(baseline[1]))
        if base is not None and base is not main:
            b = base["stats"]["median"]
            name = "NumPy" if baseline is None else f"{baseline[0]} ({baseline[1]})"
            ratio = f"{med / b:.3f} ({name} {fmt_time(b)}: {b / med:.1f}x faster)"
        lines.append(f"| {label} | {fmt_time(med)} | {goal} | {ratio} |")
    lines.append(f"| `import lmfit3d` (-X importtime, cumulative) | {fmt_time(imports['lmfit3d'] * 1e-6)} | | |")
    lines.append(f"| `import lmfit3d.skinning` (loads numpy, numba; -X importtime) | "
                 f"{fmt_time(imports['lmfit3d.skinning'] * 1e-6)} | | |")
    lines.append(
        f"| warm start, fresh process: import lmfit3d.skinning {fmt_time(warm['import'])} + load model "
        f"{fmt_time(warm['load'])} + first evaluate_points (dense320, cached kernels) "
        f"{fmt_time(warm['first_eval'])} | {fmt_time(warm['total'])} | | (process wall time "
        f"{fmt_time(warm['wall'])}) |")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 epilog="Other arguments go to pytest.", allow_abbrev=False)
    results_doc.add_arguments(ap)
    args, extra = ap.parse_known_args(sys.argv[1:] if argv is None else argv)
    bench = run_benchmarks(extra)
    imports = {m: import_time_us(m) for m in ("lmfit3d", "lmfit3d.skinning")}
    warm = warm_start()
    info = bench.get("machine_info", {})
    import numba
    import numpy

    text = (f"Machine: {info.get('cpu', {}).get('brand_raw') or platform.processor() or 'unknown CPU'}, "
            f"Python {platform.python_version()}, NumPy {numpy.__version__}, Numba {numba.__version__}, "
            f"one thread (NUMBA_NUM_THREADS=1, BLAS threads 1).  Medians from pytest-benchmark.\n\n"
            + table(bench, imports, warm))
    print(text)
    results_doc.maybe_write(args, {"report": text})
    return 0


if __name__ == "__main__":
    sys.exit(main())
