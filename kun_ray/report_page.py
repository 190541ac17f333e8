"""`kun-ray report`: a run as one self-contained HTML page.

The funnel, histograms of length and perplexity with the cut marked, the score distribution,
the mix of sources after each stage, the top reject reasons per stage and per source, and
sample pairs.  Figures are matplotlib SVG inlined in the page, styles are inline, and there is
no script: the page opens anywhere, offline, and can be mailed or archived as one file.
Everything is counted by DuckDB over the run's committed files, so a page of a run that is
still going shows what it has finished.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jinja2

from kun_ray import __version__
from kun_ray.query import Run
from kun_ray.run import LEGACY_CUT, REPORT_PAGE, declared
from kun_ray.secrets import redact

BINS = 40
KEPT, CUT = "#4C78A8", "#E45756"
SAMPLE_TEXT_CHARS = 400


@dataclass
class Histogram:
    """Counts of a measure in equal bins, split into rows a stage kept and rows it cut."""

    title: str
    measure: str
    edges: list[float]
    kept: list[int]
    cut: list[int]
    #: Where the stage cut, and which side it keeps ("max": at or below it, "min": at or above it).
    threshold: float | None
    side: str

    @property
    def total(self) -> int:
        return sum(self.kept) + sum(self.cut)


def histogram(
    run: Run, title: str, measure: str, rows_sql: str, threshold: float | None, side: str
) -> Histogram | None:
    """Bin `rows_sql` (columns x, is_cut) in DuckDB, up to the 99.5th percentile or the cut
    (beyond it, the last bin), so one outlier does not flatten the rest; None when there are no rows."""
    lo, top, n = run.connection.execute(
        f"SELECT min(x), quantile_cont(x, 0.995), count(*) FROM ({rows_sql}) WHERE x IS NOT NULL"
    ).fetchone()
    if not n:
        return None
    if threshold is not None:  # the cut is always in sight, with room on its far side
        lo, top = min(lo, threshold), max(top, threshold)
    hi = top + (top - lo) * 0.05
    width = (hi - lo) / BINS if hi > lo else 1.0
    counts = run.connection.execute(
        f"SELECT least(greatest(CAST(floor((x - {lo!r}) / {width!r}) AS INTEGER), 0), {BINS - 1}) AS bin, "
        f"is_cut, count(*) FROM ({rows_sql}) WHERE x IS NOT NULL GROUP BY ALL"
    ).fetchall()
    kept, cut = [0] * BINS, [0] * BINS
    for bin_, is_cut, count in counts:
        (cut if is_cut else kept)[bin_] += count
    return Histogram(title, measure, [lo + i * width for i in range(BINS + 1)], kept, cut, threshold, side)


def measure_histograms(run: Run) -> list[Histogram]:
    """A histogram of each measure a stage of the plan charts (length, perplexity, score, ...),
    over every row that stage measured: the rows its flow kept, and the ones cut at or after it."""
    stages = declared(run.manifest)
    fixed = dict(run.manifest.get("fixed", {}))
    if LEGACY_CUT in fixed:
        fixed.setdefault("perplexity", fixed[LEGACY_CUT])
    charts: list[Histogram] = []
    for flow in run.layout:
        if flow.name not in run.ledgers:
            continue
        rejects = run.reject_files(flow=flow.name)
        rejected = f"SELECT * FROM {run.scan(rejects)}" if rejects else None
        kept_columns = set(run.sql(f"SELECT * FROM {flow.output} LIMIT 0").columns)
        rejected_columns = set(run.sql(f"{rejected} LIMIT 0").columns) if rejected else set()
        for name in flow.stages:
            for chart in stages.get(name, {}).get("charts", []):
                column = chart["column"]
                parts = []
                if column in kept_columns:
                    parts.append(f"SELECT CAST({column} AS DOUBLE) AS x, false AS is_cut FROM {flow.output}")
                if column in rejected_columns:
                    parts.append(f"SELECT CAST({column} AS DOUBLE) AS x, stage = '{name}' AS is_cut FROM ({rejected})")
                if not parts:
                    continue
                threshold = (fixed.get(name) or {}).get(chart["fixed"]) if chart.get("fixed") else chart["threshold"]
                charts.append(
                    histogram(run, chart["title"], chart["unit"], " UNION ALL ".join(parts), threshold, chart["side"])
                )
    return [c for c in charts if c is not None]


# --- figures ------------------------------------------------------------------------------------


def _svg(figure: Any) -> str:
    import matplotlib.pyplot as plt

    buffer = io.StringIO()
    figure.savefig(buffer, format="svg", bbox_inches="tight", metadata={"Date": None})
    plt.close(figure)
    svg = buffer.getvalue()
    return svg[svg.index("<svg") :]  # inline: no XML prolog or doctype


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update(
        {
            "svg.fonttype": "none",
            "svg.hashsalt": "kun-ray",
            "font.size": 9,
            "axes.spines.top": False,
            "axes.spines.right": False,
        }
    )
    return plt


def histogram_svg(chart: Histogram) -> str:
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    figure, axes = plt.subplots(figsize=(6.4, 2.6))
    lefts, widths = chart.edges[:-1], [b - a for a, b in zip(chart.edges, chart.edges[1:])]
    axes.bar(lefts, chart.kept, width=widths, align="edge", color=KEPT, label="kept")
    axes.bar(lefts, chart.cut, width=widths, align="edge", bottom=chart.kept, color=CUT, label="cut")
    if chart.threshold is not None:
        axes.axvline(chart.threshold, color="black", linestyle="--", linewidth=1)
        keeps = "≤" if chart.side == "max" else "≥"
        right_half = chart.threshold > (chart.edges[0] + chart.edges[-1]) / 2  # the label goes on the roomier side
        axes.annotate(
            f"cut: keep {keeps} {chart.threshold:g}",
            xy=(chart.threshold, 1),
            xycoords=("data", "axes fraction"),
            xytext=(-4 if right_half else 4, -10),
            textcoords="offset points",
            ha="right" if right_half else "left",
            fontsize=8,
        )
    axes.set_xlabel(chart.measure)
    axes.set_ylabel("rows")
    axes.yaxis.set_major_locator(MaxNLocator(integer=True))
    axes.legend(frameon=False, fontsize=8, ncol=2, loc="lower left", bbox_to_anchor=(0, 1))
    return _svg(figure)


def funnel_svg(funnel: list[dict[str, Any]]) -> str:
    plt = _pyplot()
    names = [s["stage"] for s in funnel][::-1]
    kept = [s["kept"] for s in funnel][::-1]
    rejected = [s["rejected"] for s in funnel][::-1]
    figure, axes = plt.subplots(figsize=(6.4, 0.3 * len(names) + 0.8))
    axes.barh(names, kept, color=KEPT, label="kept")
    axes.barh(names, rejected, left=kept, color=CUT, label="rejected")
    for y, (k, r) in enumerate(zip(kept, rejected)):
        axes.annotate(
            f"{k:,} / {k + r:,}", xy=(k + r, y), xytext=(3, 0), textcoords="offset points", va="center", fontsize=7
        )
    axes.set_xlabel("rows")
    axes.legend(frameon=False, fontsize=8, loc="lower right")
    return _svg(figure)


def source_mix_svg(funnel: list[dict[str, Any]]) -> str:
    """Each stage's kept rows by source, as shares: how each filter changed the mix."""
    plt = _pyplot()
    sources = sorted({source for stage in funnel for source in stage["by_source"]})
    names = [s["stage"] for s in funnel][::-1]
    figure, axes = plt.subplots(figsize=(6.4, 0.3 * len(names) + 0.8))
    left = [0.0] * len(names)
    colours = plt.get_cmap("tab10")
    for i, source in enumerate(sources):
        shares = []
        for stage in funnel[::-1]:
            total = stage["kept"] or 1
            shares.append(stage["by_source"].get(source, {}).get("kept", 0) / total)
        axes.barh(names, shares, left=left, color=colours(i % 10), label=source)
        left = [a + b for a, b in zip(left, shares)]
    axes.set_xlim(0, 1)
    axes.set_xlabel("share of kept rows")
    axes.legend(frameon=False, fontsize=8, ncol=min(len(sources), 5), loc="upper center", bbox_to_anchor=(0.5, -0.25))
    return _svg(figure)


# --- tables ---------------------------------------------------------------------------------------


def reason_rows(funnel: list[dict[str, Any]], limit: int = 5) -> tuple[list[str], list[dict[str, Any]]]:
    """The top reject reasons of each stage, with their counts overall and per source."""
    sources = sorted({source for stage in funnel for source in stage["by_source"]})
    rows = []
    for stage in funnel:
        for reason, total in list(stage["rejected_by_reason"].items())[:limit]:
            per_source = [stage["by_source"].get(s, {}).get("rejected_by_reason", {}).get(reason, 0) for s in sources]
            rows.append(
                {
                    "stage": stage["stage"],
                    "reason": reason,
                    "total": total,
                    "share": total / stage["in"] if stage["in"] else 0.0,
                    "per_source": per_source,
                }
            )
    return sources, rows


def sample_pairs(run: Run, n: int = 5) -> tuple[str | None, list[dict[str, Any]]]:
    """A few rows of the last stage whose rows have instructions (final, else polished, scored, labeled)."""
    for stage in reversed(run.stages):
        if run.files(stage) and "instruction" in run.sql(f"SELECT * FROM {stage} LIMIT 0").columns:
            rows = run.sample(stage, n)
            for row in rows:
                text = " ".join((row.get("text") or "").split())
                row["text_shown"] = text if len(text) <= SAMPLE_TEXT_CHARS else text[:SAMPLE_TEXT_CHARS] + "…"
            return stage, sorted(rows, key=lambda r: (r["source"], r["doc_id"]))
    return None, []


# --- the page -------------------------------------------------------------------------------------


def _number(value: Any) -> str:
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.3g}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def render_report(run: Run) -> str:
    """The report page of a run, as HTML."""
    funnel = run.funnel()
    charts = measure_histograms(run)
    sources, reasons = reason_rows(funnel)
    sample_stage, samples = sample_pairs(run)
    environment = jinja2.Environment(
        loader=jinja2.PackageLoader("kun_ray", "templates"), autoescape=True, undefined=jinja2.StrictUndefined
    )
    environment.filters["number"] = _number
    page = environment.get_template("report.html").render(
        run=run,
        manifest=run.manifest,
        progress=run.progress(),
        finished=run.finished,
        funnel=funnel,
        funnel_svg=funnel_svg(funnel) if funnel else None,
        source_mix_svg=source_mix_svg(funnel)
        if funnel and len({s for st in funnel for s in st["by_source"]}) > 1
        else None,
        charts=[(chart, histogram_svg(chart)) for chart in charts],
        sources=sources,
        reasons=reasons,
        sample_stage=sample_stage,
        samples=samples,
        version=__version__,
        written_at=datetime.now(UTC).isoformat(timespec="seconds"),
    )
    return redact(page)


def write_report(run: Run, output: str | None = None) -> str:
    """Write the report page to the local file `output`, by default report.html in the run folder; where it went."""
    page = render_report(run).encode("utf-8")
    if output is None:
        run.folder.fs.pipe_file(run.folder.path(REPORT_PAGE), page)
        return f"{run.url.rstrip('/')}/{REPORT_PAGE}"
    Path(output).write_bytes(page)
    return output
