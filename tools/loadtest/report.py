"""Statistics over turn records, and the report files: report.json, turns.csv, latency.png, sweep.png."""

from __future__ import annotations

import csv
import json
import math
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

from tools.loadtest.client import TurnResult
from tools.loadtest.runner import RunResult

LATENCY_FIELDS = ("upload_s", "transcript_s", "ttfa_s", "done_s", "asr", "llm", "llm_first_sentence", "tts",
                  "tts_first_chunk", "overhead_s")
QUANTILES = (("p50", 50.0), ("p95", 95.0), ("p99", 99.0))


def percentile(values: Iterable[float], q: float) -> float | None:
    """The q-th percentile (0..100) with linear interpolation between closest ranks (numpy's default)."""
    data = sorted(v for v in values if v is not None and not math.isnan(v))
    if not data:
        return None
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"percentile {q} is outside 0..100")
    pos = (len(data) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(data) - 1)
    return data[lo] + (data[hi] - data[lo]) * (pos - lo)


def stats(values: Sequence[float | None]) -> dict:
    data = [v for v in values if v is not None]
    out = {"n": len(data)}
    for name, q in QUANTILES:
        out[name] = _round(percentile(data, q))
    out["max"] = _round(max(data)) if data else None
    out["mean"] = _round(sum(data) / len(data)) if data else None
    return out


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 6)


def summarize(run: RunResult) -> dict:
    turns = run.turns
    ok = [t for t in turns if t.ok]
    errors = [t for t in turns if not t.ok]
    minutes = run.wall_s / 60.0 if run.wall_s > 0 else None
    latency = {name: stats([getattr(t, name) for t in turns]) for name in LATENCY_FIELDS}
    return {
        "mode": run.mode,
        "level": run.level,
        "concurrency": run.level if run.mode == "concurrency" else None,
        "rate": run.level if run.mode == "rate" else None,
        "planned_turns": run.planned_turns,
        "turns": len(turns),
        "ok_turns": len(ok),
        "errors": len(errors),
        "error_rate": round(len(errors) / len(turns), 6) if turns else None,
        "errors_by_kind": dict(Counter(t.error_kind for t in errors)),
        "errors_by_detail": dict(Counter(t.error_label for t in errors)),
        "wall_s": round(run.wall_s, 6),
        "turns_per_minute": round(len(ok) / minutes, 4) if minutes else None,
        "attempted_turns_per_minute": round(len(turns) / minutes, 4) if minutes else None,
        "stopped_by_deadline": run.stopped_by_deadline,
        "latency": latency,
        "overhead": {"p50": latency["overhead_s"]["p50"], "p95": latency["overhead_s"]["p95"]},
        "chunks": stats([t.chunks for t in ok]),
        "audio_s": stats([t.audio_s for t in ok]),
        # how the replies ended, and how many said a sentence twice (issue 18's loops)
        "end_reasons": dict(Counter(t.end_reason or "unknown" for t in ok)),
        "sentences": stats([t.sentences for t in ok]),
        "replies_with_a_repeat": sum(1 for t in ok if t.repeated_sentences),
        "repeat_share": round(sum(1 for t in ok if t.repeated_sentences) / len(ok), 6) if ok else None,
    }


def build_report(runs: list[RunResult], config: dict) -> dict:
    return {"config": config, "runs": [summarize(r) for r in runs]}


def write_json(report: dict, path: Path) -> Path:
    path.write_text(json.dumps(report, indent=2, sort_keys=False) + "\n")
    return path


def write_csv(runs: list[RunResult], path: Path) -> Path:
    columns = ["mode", "level", *TurnResult.columns()]
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        for run in runs:
            for turn in run.turns:
                writer.writerow({"mode": run.mode, "level": run.level, **turn.as_dict()})
    return path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _label(run: RunResult) -> str:
    return f"c={run.level:g}" if run.mode == "concurrency" else f"rate={run.level:g}/s"


def plot_latency(runs: list[RunResult], path: Path) -> Path:
    """Histogram and CDF of ttfa_s and done_s, one series per run."""
    plt = _pyplot()
    fig, axes = plt.subplots(2, 2, figsize=(11, 7))
    for col, name in enumerate(("ttfa_s", "done_s")):
        hist, cdf = axes[0][col], axes[1][col]
        every = [v for run in runs for v in (getattr(t, name) for t in run.turns) if v is not None]
        bins = min(30, max(5, len(every) // 3))
        edges = [min(every) + (max(every) - min(every)) * i / bins for i in range(bins + 1)] if every else bins
        if every and max(every) == min(every):
            edges = bins
        for run in runs:
            values = sorted(v for v in (getattr(t, name) for t in run.turns) if v is not None)
            if not values:
                continue
            hist.hist(values, bins=edges, alpha=0.5, label=_label(run))
            cdf.step(values, [(i + 1) / len(values) for i in range(len(values))], where="post", label=_label(run))
        title = "time to first audio" if name == "ttfa_s" else "time to done"
        hist.set_title(f"{title} ({name})")
        hist.set_xlabel("seconds after upload")
        hist.set_ylabel("turns")
        cdf.set_title(f"CDF of {name}")
        cdf.set_xlabel("seconds after upload")
        cdf.set_ylabel("fraction of turns")
        cdf.set_ylim(0, 1.02)
        cdf.grid(alpha=0.3)
        if every:
            hist.legend(fontsize=8)
            cdf.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_sweep(summaries: list[dict], path: Path) -> Path:
    """p50/p95 ttfa and throughput against concurrency."""
    plt = _pyplot()
    levels = [s["level"] for s in summaries]
    fig, left = plt.subplots(figsize=(8, 5))
    for key, style in (("p50", "o-"), ("p95", "s--")):
        ys = [s["latency"]["ttfa_s"][key] for s in summaries]
        left.plot(levels, [math.nan if y is None else y for y in ys], style, label=f"ttfa {key}")
    left.set_xlabel("concurrency (users)")
    left.set_ylabel("time to first audio (s)")
    left.set_xticks(levels)
    left.grid(alpha=0.3)
    right = left.twinx()
    right.plot(levels, [s["turns_per_minute"] or 0 for s in summaries], "^-", color="tab:green",
               label="turns/min")
    right.set_ylabel("throughput (ok turns per minute)")
    lines = left.get_legend_handles_labels()
    more = right.get_legend_handles_labels()
    left.legend(lines[0] + more[0], lines[1] + more[1], loc="upper left", fontsize=8)
    left.set_title("concurrency sweep")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_all(runs: list[RunResult], config: dict, out_dir: Path, sweep: bool = False) -> dict:
    """report.json, turns.csv, latency.png (and sweep.png for a sweep) in out_dir; the report dict."""
    out_dir.mkdir(parents=True, exist_ok=True)
    report = build_report(runs, config)
    files = {"report": str(out_dir / "report.json"), "turns": str(out_dir / "turns.csv"),
             "latency_plot": str(out_dir / "latency.png")}
    write_csv(runs, out_dir / "turns.csv")
    plot_latency(runs, out_dir / "latency.png")
    if sweep:
        plot_sweep(report["runs"], out_dir / "sweep.png")
        files["sweep_plot"] = str(out_dir / "sweep.png")
    report["files"] = files
    write_json(report, out_dir / "report.json")
    return report


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def format_table(summary: dict) -> str:
    """A plain-text table of one run's summary."""
    head = (f"{summary['mode']} {summary['level']:g}: {summary['turns']}/{summary['planned_turns']} turns, "
            f"{summary['ok_turns']} ok, error rate {summary['error_rate'] or 0:.1%}, "
            f"{_fmt(summary['turns_per_minute'])} turns/min, wall {summary['wall_s']:.1f} s"
            + (" (stopped by --max-seconds)" if summary["stopped_by_deadline"] else ""))
    lines = [head, f"  {'field (s)':<20}{'n':>5}{'p50':>10}{'p95':>10}{'p99':>10}{'max':>10}"]
    for name in LATENCY_FIELDS:
        s = summary["latency"][name]
        lines.append(f"  {name:<20}{s['n']:>5}{_fmt(s['p50']):>10}{_fmt(s['p95']):>10}{_fmt(s['p99']):>10}"
                     f"{_fmt(s['max']):>10}")
    lines.append(f"  chunks p50 {_fmt(summary['chunks']['p50'])}, audio_s p50 {_fmt(summary['audio_s']['p50'])}, "
                 f"overhead p50 {_fmt(summary['overhead']['p50'])} p95 {_fmt(summary['overhead']['p95'])}")
    if summary["end_reasons"]:
        reasons = ", ".join(f"{k}: {v}" for k, v in sorted(summary["end_reasons"].items()))
        lines.append(f"  replies: sentences p50 {_fmt(summary['sentences']['p50'])}, "
                     f"{summary['replies_with_a_repeat']} with a repeated sentence; ended by {reasons}")
    if summary["errors_by_detail"]:
        detail = ", ".join(f"{k}: {v}" for k, v in sorted(summary["errors_by_detail"].items()))
        lines.append(f"  errors: {detail}")
    return "\n".join(lines)


# --- side by side: this product against the original flow ------------------------------------

def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or denominator is None or denominator == 0:
        return None
    return round(numerator / denominator, 3)


def compare(product: list[dict], original: list[dict]) -> list[dict]:
    """Per level: TTFA p50/p95 and throughput of both flows, and the gains as ratios
    (TTFA: original / product, above 1 is faster; throughput: product / original)."""
    rows = []
    for p, o in zip(product, original):
        ttfa_p, ttfa_o = p["latency"]["ttfa_s"], o["latency"]["ttfa_s"]
        rows.append({
            "concurrency": p["level"],
            "ttfa_p50": {"product": ttfa_p["p50"], "original": ttfa_o["p50"]},
            "ttfa_p95": {"product": ttfa_p["p95"], "original": ttfa_o["p95"]},
            "turns_per_minute": {"product": p["turns_per_minute"], "original": o["turns_per_minute"]},
            "errors": {"product": p["errors"], "original": o["errors"]},
            "ttfa_p50_speedup": _ratio(ttfa_o["p50"], ttfa_p["p50"]),
            "throughput_ratio": _ratio(p["turns_per_minute"], o["turns_per_minute"]),
        })
    return rows


def format_comparison(rows: list[dict]) -> str:
    lines = ["side by side (product vs original flow; speedup = original / product TTFA, "
             "throughput ratio = product / original)",
             f"  {'c':>3}{'TTFA p50 s':>22}{'speedup':>9}{'turns/min':>22}{'ratio':>8}{'errors':>10}"]
    for r in rows:
        t, m, e = r["ttfa_p50"], r["turns_per_minute"], r["errors"]
        lines.append(f"  {r['concurrency']:>3g}{_fmt(t['product']):>11}{_fmt(t['original']):>11}"
                     f"{_fmt(r['ttfa_p50_speedup']):>9}{_fmt(m['product']):>11}{_fmt(m['original']):>11}"
                     f"{_fmt(r['throughput_ratio']):>8}{e['product']:>5}{e['original']:>5}")
    return "\n".join(lines)
