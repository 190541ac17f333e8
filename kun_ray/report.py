"""The run report: per-stage and per-source counts, as report.json and as a short table."""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Any

from kun_ray.run import Tally


def _counts(tally: Tally) -> dict[str, Any]:
    kept = sum(n for (_, reason), n in tally.items() if reason is None)
    by_reason: Counter[str] = Counter()
    for (_, reason), n in tally.items():
        if reason is not None:
            by_reason[reason] += n
    return {
        "in": kept + sum(by_reason.values()),
        "kept": kept,
        "rejected": sum(by_reason.values()),
        "rejected_by_reason": dict(by_reason.most_common()),
    }


def stage_report(stage: str, tally: Tally, wall_s: float, **extra: Any) -> dict[str, Any]:
    """One stage's accounting: in = kept + rejected, overall and for each source."""
    per_source: dict[str, Tally] = defaultdict(Counter)
    for (source, reason), n in tally.items():
        per_source[source][(source, reason)] += n
    return {
        "stage": stage,
        **_counts(tally),
        "by_source": {source: _counts(t) for source, t in sorted(per_source.items())},
        "wall_s": round(wall_s, 3),
        **extra,
    }


def _reasons(counts: dict[str, Any], limit: int = 3) -> str:
    items = list(counts["rejected_by_reason"].items())
    text = ", ".join(f"{reason} {n}" for reason, n in items[:limit])
    return text + (f", +{len(items) - limit} more" if len(items) > limit else "")


def format_table(report: dict[str, Any]) -> str:
    """The funnel as a plain-text table: each stage, then each source under it."""
    rows = [("stage", "source", "in", "kept", "rejected", "top reasons")]
    for stage in report["stages"]:
        rows.append((stage["stage"], "(all)", str(stage["in"]), str(stage["kept"]), str(stage["rejected"]), _reasons(stage)))
        for source, counts in stage["by_source"].items():
            rows.append(("", source, str(counts["in"]), str(counts["kept"]), str(counts["rejected"]), _reasons(counts)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    lines = []
    for r in rows:
        cells = [c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))]
        lines.append("  ".join([*cells, r[-1]]).rstrip())
    return "\n".join(lines)
