"""The run report: per-stage and per-source counts, as report.json and as a short table."""

from __future__ import annotations

from collections import Counter
from typing import Any

from kun_ray.ledger import Splits, Tally


def _counts(rows_in: int, rejected: Counter[str], made: int | None = None) -> dict[str, Any]:
    total = sum(rejected.values())
    counts = {
        "in": rows_in,
        "kept": rows_in + (made or 0) - total,
        "rejected": total,
        "rejected_by_reason": dict(rejected.most_common()),
    }
    if made is not None:  # a split stage: the rows it made beyond one per row in
        counts["made"] = made
    return counts


def flow_report(
    stages: list[str],
    tally: Tally,
    extras: dict[str, dict[str, Any]] | None = None,
    splits: Splits | None = None,
) -> list[dict[str, Any]]:
    """Each stage of a flow: rows in (what the stages before it kept), kept, rejected by reason,
    overall and for each source.  Rows in + made = kept + rejected at every stage by
    construction, where `made` is what a split stage (segment) made beyond one row per row in."""
    splits = splits or Counter()
    split_stages = {stage for stage, _ in splits}
    sources = sorted({source for _, source, _ in tally})
    remaining = {
        source: sum(n for (_, s, _), n in tally.items() if s == source)
        - sum(n for (_, s), n in splits.items() if s == source)
        for source in sources
    }
    reports = []
    for stage in stages:
        by_source = {}
        for source in sources:
            rejected = Counter({reason: n for (st, s, reason), n in tally.items() if st == stage and s == source})
            made = splits[(stage, source)] if stage in split_stages else None
            by_source[source] = _counts(remaining[source], rejected, made)
            remaining[source] = by_source[source]["kept"]
        overall: Counter[str] = Counter()
        for counts in by_source.values():
            overall.update(counts["rejected_by_reason"])
        rows_in = sum(c["in"] for c in by_source.values())
        made = sum(c["made"] for c in by_source.values()) if stage in split_stages else None
        reports.append(
            {
                "stage": stage,
                **_counts(rows_in, overall, made),
                "by_source": by_source,
                **(extras or {}).get(stage, {}),
            }
        )
    return reports


def _reasons(counts: dict[str, Any], limit: int = 3) -> str:
    items = list(counts["rejected_by_reason"].items())
    text = ", ".join(f"{reason} {n}" for reason, n in items[:limit])
    text += f", +{len(items) - limit} more" if len(items) > limit else ""
    return f"made {counts['made']} rows" + (f"; {text}" if text else "") if "made" in counts else text


def _aligned(rows: list[tuple[str, ...]], left: int) -> str:
    """Rows as columns: the first `left` aligned left, the others right, the last left as it is."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    lines = []
    for r in rows:
        cells = [c.ljust(w) if i < left else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))]
        lines.append("  ".join([*cells, r[-1]]).rstrip())
    return "\n".join(lines)


def format_flows(report: dict[str, Any]) -> str:
    """Each flow of this invocation: shards done before, rows it processed, its wall time and throughput."""
    rows = [("flow", "shards", "resumed", "rows", "wall s", "rows/s", "")]
    for name, flow in report["flows"].items():
        rate = "" if flow["rows_per_s"] is None else f"{flow['rows_per_s']:,.1f}"
        rows.append(
            (
                name,
                str(flow["shards"]),
                str(flow["shards_resumed"]),
                f"{flow['rows']:,}",
                f"{flow['wall_s']:.1f}",
                rate,
                "",
            )
        )
    return _aligned(rows, 1)


def format_table(report: dict[str, Any], per_source: bool = True) -> str:
    """The funnel as a plain-text table: each stage, then the sources it rejected rows of."""
    rows = [("stage", "source", "in", "kept", "rejected", "top reasons")]
    for stage in report["stages"]:
        rows.append(
            (stage["stage"], "(all)", str(stage["in"]), str(stage["kept"]), str(stage["rejected"]), _reasons(stage))
        )
        if per_source and len(stage["by_source"]) > 1:
            for source, counts in stage["by_source"].items():
                if not counts["rejected"]:
                    continue
                rows.append(
                    ("", source, str(counts["in"]), str(counts["kept"]), str(counts["rejected"]), _reasons(counts))
                )
    return _aligned(rows, 2)
