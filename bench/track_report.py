"""Run the video pipeline benchmarks and print a markdown table (medians, goals, ratios).

Usage::

    python bench/track_report.py                  # run bench/test_bench_track.py and print
    python bench/track_report.py --from out.json  # print from an existing pytest-benchmark JSON
    python bench/track_report.py --write-doc      # also write it into docs/results.md ("track_report")
"""
import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import results_doc  # noqa: E402
from fit_report import benchmark_data  # noqa: E402

ORDER = ("decode", "detect", "landmarks_mesh", "landmarks", "landmarks_track", "landmarks_track_attention", "fit", "fit_classic", "write", "end_to_end",
         "end_to_end_no_iris", "end_to_end_decode")
LABEL = {"decode": "decode one 1080p frame (imageio/ffmpeg)",
         "detect": "detect (BlazeFace, whole frame)",
         "landmarks_mesh": "landmarks: face mesh only (--no-iris)",
         "landmarks": "landmarks: face mesh + 2 iris crops (predict; stills, --iris-both)",
         "landmarks_track": "landmarks while tracking: mesh + 1 iris crop, alternating (default)",
         "landmarks_track_attention": "landmarks while tracking: attention mesh (--backend mediapipe-attention)",
         "fit": "fit: Tracker.step, 470 landmarks, warm",
         "fit_classic": "fit, J^T J re-use off (classic LM; same-run baseline)",
         "write": "write: CSV + ARKit rows of one frame",
         "end_to_end": "end to end per frame, pre-decoded frames (both passes, outputs)",
         "end_to_end_no_iris": "end to end per frame, pre-decoded frames, --no-iris",
         "end_to_end_decode": "end to end per frame, reading the file"}


def table(data):
    by = {b["extra_info"].get("kind"): b for b in data["benchmarks"] if b.get("extra_info", {}).get("kind")}
    machine = data.get("machine_info", {})
    lines = [f"Machine: {machine.get('cpu', {}).get('brand_raw', '?')}, one thread.  Medians from "
             "pytest-benchmark; ratio = median / median of `landmarks` in the same run.", "",
             "| stage | median (ms) | goal | per-frame fps | ratio to landmarks |", "|---|---:|---:|---:|---:|"]
    ref = by.get("landmarks", {}).get("stats", {}).get("median")
    for k in ORDER:
        if k not in by:
            continue
        b = by[k]
        med = b["stats"]["median"]
        if k.startswith("end_to_end"):
            med /= b["extra_info"].get("frames", 1)
        goal = b["extra_info"].get("goal_ms")
        goal_s = f"<= {goal} ms ({'met' if med * 1e3 <= goal else 'not met'})" if goal else ""
        if k in ("end_to_end", "end_to_end_no_iris"):
            goal_s = f">= 100 fps ({'met' if 1 / med >= 100 else 'not met'})"
        ratio = f"{med / ref:.2f}" if ref else ""
        lines.append(f"| {LABEL[k]} | {med * 1e3:.2f} | {goal_s} | {1 / med:.0f} | {ratio} |")
    for k in ("end_to_end", "end_to_end_no_iris", "end_to_end_decode"):
        if k in by and "stage_ms" in by[k]["extra_info"]:
            st = by[k]["extra_info"]["stage_ms"]
            lines.append("")
            lines.append(f"Stage split inside `{k}` (ms per frame, last round): " +
                         ", ".join(f"{s} {v:.2f}" for s, v in st.items()))
    for k in ("fit", "fit_classic"):
        if k in by and "iterations" in by[k]["extra_info"]:
            info = by[k]["extra_info"]
            lines.append(f"\nLM iterations in the timed `{k}`: {info['iterations']} "
                         f"({info.get('jtj_evals', '?')} J^T J accumulations).")
    if "fit" in by and "fit_classic" in by:
        r = by["fit_classic"]["stats"]["median"] / by["fit"]["stats"]["median"]
        lines.append(f"`fit_classic` / `fit` (J^T J re-use speed-up, same run): {r:.2f}x.")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    ap.add_argument("--from", dest="src", help="existing pytest-benchmark JSON")
    ap.add_argument("--json", help="keep pytest-benchmark's JSON here")
    results_doc.add_arguments(ap)
    args, extra = ap.parse_known_args(argv)
    if args.src:
        data = json.loads(Path(args.src).read_text())
    else:
        data = benchmark_data(args.json, extra, HERE / "test_bench_track.py")
    text = table(data)
    print(text)
    results_doc.maybe_write(args, {"track_report": text})
    return 0


if __name__ == "__main__":
    sys.exit(main())
