"""The plots of a scaling experiment, as PNG files: wall time, efficiency and the phase
breakdown against the worker count. matplotlib (the ``scale`` extra) is imported here only, and
only its object API with the Agg canvas is used: no pyplot, no display, no global state."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from dask_datalog.cluster.experiments.scaling import STACKED, WEAK, Summary

PLOTS = ("time_vs_workers.png", "efficiency_vs_workers.png", "phases_by_workers.png")
WORKERS_AXIS = "workers (Dask worker processes)"
PHASE_LABELS = {
    "load": "load (reading facts)",
    "join": "join",
    "dedup": "dedup",
    "difference": "difference",
    "merge": "merge",
    "send": "exchange send",
    "wait": "exchange wait",
    "other": "other (client, scheduling)",
}


def write_plots(summaries: Sequence[Summary], scaling: str, title: str, out: Path) -> list[Path]:
    """The three PNGs into ``out``; returns their paths."""
    figures = (_time(summaries, scaling, title), _efficiency(summaries, scaling, title), _phases(summaries, title))
    paths = [out / name for name in PLOTS]
    for figure, path in zip(figures, paths):
        FigureCanvasAgg(figure)
        figure.savefig(path, dpi=120)
    return paths


def _figure(title: str) -> tuple[Figure, Axes]:
    figure = Figure(figsize=(7, 4.5), layout="constrained")
    axes = figure.add_subplot()
    axes.set_title(title, fontsize=10)
    axes.grid(True, alpha=0.3)
    return figure, axes


def _distributed(summaries: Sequence[Summary]) -> list[Summary]:
    return [s for s in summaries if s.workers > 0]


def _worker_ticks(axes: Axes, summaries: Sequence[Summary]) -> None:
    counts = [s.workers for s in summaries]
    axes.set_xscale("log", base=2)
    axes.set_xticks(counts, [str(n) for n in counts])
    axes.set_xlabel(WORKERS_AXIS)


def _time(summaries: Sequence[Summary], scaling: str, title: str) -> Figure:
    """Median wall time per worker count, min-max as error bars; the in-process median as a
    horizontal line; for strong scaling the ideal t1*n1/n."""
    figure, axes = _figure(f"{scaling} scaling: wall time per run\n{title}")
    shown = _distributed(summaries)
    if shown:
        counts = [s.workers for s in shown]
        medians = [s.median_s for s in shown]
        spread = [[s.median_s - s.min_s for s in shown], [s.max_s - s.median_s for s in shown]]
        axes.errorbar(counts, medians, yerr=spread, marker="o", capsize=4, label="median (bars: min-max)")
        if scaling != WEAK:
            n1, t1 = counts[0], medians[0]
            axes.plot(counts, [t1 * n1 / n for n in counts], linestyle=":", color="grey", label="ideal (t1·n1/n)")
        _worker_ticks(axes, shown)
    else:
        axes.set_xlabel(WORKERS_AXIS)
    for s in summaries:
        if s.workers == 0:
            axes.axhline(s.median_s, linestyle="--", color="tab:green", label="in process (median)")
    axes.set_ylabel("wall time of Program.run() (s)")
    axes.set_ylim(bottom=0)
    axes.legend()
    return figure


def _efficiency(summaries: Sequence[Summary], scaling: str, title: str) -> Figure:
    formula = "t1 / tn" if scaling == WEAK else "n1·t1 / (n·tn)"
    figure, axes = _figure(f"{scaling} scaling: parallel efficiency\n{title}")
    shown = [s for s in _distributed(summaries) if s.efficiency is not None]
    if shown:
        axes.plot([s.workers for s in shown], [s.efficiency or 0.0 for s in shown], marker="o", label="by median wall times")
        _worker_ticks(axes, shown)
    else:
        axes.set_xlabel(WORKERS_AXIS)
    axes.axhline(1.0, linestyle=":", color="grey", label="ideal")
    axes.set_ylabel(f"efficiency {formula} (1 = ideal)")
    axes.set_ylim(bottom=0)
    axes.legend()
    return figure


def _phases(summaries: Sequence[Summary], title: str) -> Figure:
    """Per worker count, the median seconds of each phase (per worker, averaged over workers)
    stacked, topped by what they leave of the median wall time."""
    figure, axes = _figure(f"where the time goes (medians, per worker)\n{title}")
    labels = ["in process" if s.workers == 0 else str(s.workers) for s in summaries]
    bottom = [0.0] * len(summaries)
    for phase in (*STACKED, "other"):
        heights = [s.phases[phase] for s in summaries]
        axes.bar(labels, heights, bottom=bottom, label=PHASE_LABELS[phase])
        bottom = [b + h for b, h in zip(bottom, heights)]
    axes.set_xlabel(WORKERS_AXIS)
    axes.set_ylabel("time per run (s)")
    axes.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return figure
