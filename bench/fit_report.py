"""Run the per-frame fit benchmarks and print a markdown table.

Runs ``pytest bench/test_bench_fit.py --benchmark-only --benchmark-json=TMP`` (one thread), then
prints per landmark set the median time of each benchmark, and the speed-up of ours against the
SciPy baseline measured in the same run (``scipy median / our median``) and against our own solver
with J^T J re-use off (the classic LM, same run), with the solvers' iterations (J^T J
accumulations) / function evaluations and final costs.

Usage::

    python bench/fit_report.py                  # run and print
    python bench/fit_report.py --json out.json  # also keep pytest-benchmark's JSON
    python bench/fit_report.py --from out.json  # print from an existing JSON, no run
    python bench/fit_report.py --write-doc      # also write it into docs/results.md ("fit_report")
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import results_doc

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
ORDER = ("step", "step_classic", "lm_solve", "python_driver", "scipy_trf", "scipy_trf_ftol")
LABEL = {"step": "Tracker.step (policy + LM)",
         "step_classic": "Tracker.step, J^T J re-use off (classic LM)",
         "lm_solve": "FrameProblem.solve (bare LM)",
         "python_driver": "FrameProblem.solve through the Python LM driver (compiled=False)",
         "scipy_trf": "scipy least_squares trf, 2-point (default tol)",
         "scipy_trf_ftol": "scipy least_squares trf, 2-point (our ftol/xtol)"}
SPEEDUP_GOAL = 20.0


def run_benchmarks(json_path, extra, test_file=HERE / "test_bench_fit.py"):
    """Run one benchmark file with pytest-benchmark (one thread), JSON to ``json_path``."""
    env = dict(os.environ)
    env.setdefault("NUMBA_NUM_THREADS", "1")
    for v in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env.setdefault(v, "1")
    cmd = [sys.executable, "-m", "pytest", str(test_file), "-q", "-p", "no:cacheprovider",
           "--benchmark-only", f"--benchmark-json={json_path}", *extra]
    print("$ " + " ".join(cmd[2:]), file=sys.stderr)
    proc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-6000:])
        raise SystemExit(f"benchmark run failed (exit {proc.returncode})")


def benchmark_data(json_path, extra, test_file=HERE / "test_bench_fit.py"):
    """Run ``test_file``'s benchmarks (:func:`run_benchmarks`) and return pytest-benchmark's JSON
    as a dict; the JSON is kept at ``json_path`` if given, else written to a temporary file."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(json_path) if json_path else Path(tmp) / "bench.json"
        run_benchmarks(path, extra, test_file)
        return json.loads(path.read_text())


def collect(data):
    """{set: {kind: benchmark dict}} from pytest-benchmark JSON."""
    out = {}
    for b in data["benchmarks"]:
        info = b.get("extra_info", {})
        kind, name = info.get("kind"), info.get("landmarks")
        if kind and name:
            out.setdefault(name, {})[kind] = b
    return out


def fmt_ms(s):
    ms = s * 1e3
    return f"{ms:.3f}" if ms < 10 else f"{ms:.1f}"


def report(data):
    by_set = collect(data)
    lines = []
    mi = data.get("machine_info", {})
    cpu = mi.get("cpu", {}).get("brand_raw", mi.get("processor", "?"))
    lines.append(f"Machine: {cpu}, Python {mi.get('python_version', '?')}, one thread.  Medians from "
                 "pytest-benchmark; scipy trf / this = scipy's median over this row's.\n")
    lines.append("| landmarks | benchmark | median (ms) | IQR (ms) | rounds | iterations / nfev | final cost "
                 "| status | scipy trf / this |")
    lines.append("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    summary = []
    for name in sorted(by_set, key=lambda s: (len(s), s)):
        group = by_set[name]
        ref = group.get("scipy_trf")
        ref_med = ref["stats"]["median"] if ref else None
        for kind in ORDER:
            b = group.get(kind)
            if b is None:
                continue
            st, info = b["stats"], b.get("extra_info", {})
            its = info.get("iterations", info.get("nfev", ""))
            if "jtj_evals" in info:
                its = f"{its} ({info['jtj_evals']} J^T J)"
            ratio = f"{ref_med / st['median']:.1f}x" if ref_med else "n/a"
            cost = info.get("cost")
            lines.append(f"| {name} | {LABEL[kind]} | {fmt_ms(st['median'])} | {fmt_ms(st['iqr'])} | "
                         f"{st['rounds']} | {its} | {cost:.3f} | {info.get('status', '')} | {ratio} |"
                         if cost is not None else
                         f"| {name} | {LABEL[kind]} | {fmt_ms(st['median'])} | {fmt_ms(st['iqr'])} | "
                         f"{st['rounds']} | {its} | | {info.get('status', '')} | {ratio} |")
        step = group.get("step")
        if step:
            med = step["stats"]["median"] * 1e3
            goal = step.get("extra_info", {}).get("goal_ms")
            lm = group.get("lm_solve")
            parts = [f"{name}: step median {med:.3f} ms"]
            if goal is not None:
                parts.append(f"goal <= {goal:g} ms {'met' if med <= goal else 'NOT met'} ({med / goal:.1f}x the goal)")
            classic = group.get("step_classic")
            if classic:
                c_ms = classic["stats"]["median"] * 1e3
                parts.append(f"J^T J re-use off {c_ms:.3f} ms ({c_ms / med:.2f}x the time of re-use on)")
            if lm:
                lm_ms = lm["stats"]["median"] * 1e3
                parts.append(f"policy overhead (step - bare LM) {med - lm_ms:.3f} ms")
                its = lm.get("extra_info", {}).get("iterations")
                if its:
                    parts.append(f"{its} LM iterations, {lm_ms / its:.3f} ms per iteration")
            for k in ("scipy_trf", "scipy_trf_ftol"):
                sb = group.get(k)
                if sb:
                    r = sb["stats"]["median"] / step["stats"]["median"]
                    c_ours, c_sp = step.get("extra_info", {}).get("cost"), sb.get("extra_info", {}).get("cost")
                    dc = f", final cost ours {c_ours:.3f} vs scipy {c_sp:.3f} ({(c_ours / c_sp - 1) * 100:+.3f} %)" \
                        if c_ours is not None and c_sp is not None else ""
                    parts.append(f"{r:.0f}x faster than {k} (goal >= {SPEEDUP_GOAL:g}x: "
                                 f"{'met' if r >= SPEEDUP_GOAL else 'NOT met'}{dc})")
            summary.append("- " + "; ".join(parts))
    lines.append("")
    lines += summary
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--json", help="keep pytest-benchmark's JSON at this path")
    ap.add_argument("--from", dest="src", help="print the table from an existing JSON (no run)")
    ap.add_argument("pytest_args", nargs="*", help="extra pytest arguments (after --)")
    results_doc.add_arguments(ap)
    a = ap.parse_args(argv)
    if a.src:
        data = json.loads(Path(a.src).read_text())
    else:
        data = benchmark_data(a.json, a.pytest_args)
    text = report(data)
    print(text)
    results_doc.maybe_write(a, {"fit_report": text})
    return 0


if __name__ == "__main__":
    sys.exit(main())
