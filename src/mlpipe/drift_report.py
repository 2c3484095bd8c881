"""``html_report``: one drift result as a small self-contained HTML page (a table and an SVG
bar chart per column), for MLflow's artifact view."""

from __future__ import annotations

import html

from mlpipe.drift import ColumnDrift, DriftResult, FeatureProfile, Profile


def html_report(result: DriftResult, profile: Profile, title: str) -> str:
    """A self-contained page: the drift table, then expected-vs-observed bars per column."""
    limits = result.thresholds
    rows = []
    for column in result.columns:
        mark = "drifted" if column.drifted else "ok"
        rows.append(
            f'<tr class="{mark}"><td>{html.escape(column.name)}</td>'
            f"<td>{column.psi:.4f}</td><td>{column.ks:.4f}</td><td>{column.p_value:.2g}</td>"
            f"<td>{mark}</td></tr>"
        )
    charts = "".join(
        _chart(column, profile_column)
        for column, profile_column in zip(result.columns, profile.columns, strict=True)
    )
    verdict = (
        f"drift in {', '.join(result.drifted_features + result.drifted_outputs)}"
        if result.drifted
        else "no drift"
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body{{font:14px system-ui,sans-serif;margin:24px;color:#222}}
table{{border-collapse:collapse}}
td,th{{padding:3px 10px;border-bottom:1px solid #ddd;text-align:right}}
td:first-child,th:first-child{{text-align:left}} tr.drifted td{{background:#fde2e1;font-weight:600}}
.charts{{display:flex;flex-wrap:wrap;gap:12px}} figure{{margin:0}} figcaption{{font-size:12px}}
.legend span{{display:inline-block;width:10px;height:10px;margin:0 4px 0 12px}}
</style></head>
<body>
<h1>{html.escape(title)}</h1>
<p id="verdict">{html.escape(verdict)}: {result.rows:,} rows compared with {profile.rows:,} training
rows; PSI threshold {_limit(limits.psi)}, KS threshold {_limit(limits.ks)}, false-alarm rate
{_limit(limits.p_value)} (chi-square p-value under it, Bonferroni over the columns), flagged from
{limits.min_rows} rows.</p>
<table id="drift"><thead><tr><th>column</th><th>PSI</th><th>KS</th><th>p-value</th><th>status</th>
</tr></thead>
<tbody>{"".join(rows)}</tbody></table>
<p class="legend"><span style="background:#9bb7d4"></span>training
<span style="background:#e07b39"></span>this run (share of rows per training decile)</p>
<div class="charts">{charts}</div>
<script>
document.body.dataset.rendered = String(document.querySelectorAll("svg.chart rect").length);
</script>
</body></html>
"""


def _limit(value: float | None) -> str:
    return "off" if value is None else f"{value:g}"


def _chart(column: ColumnDrift, profile_column: FeatureProfile) -> str:
    width, height, pad = 220, 90, 14
    n = len(column.expected)
    top = max([*column.expected, *column.observed, 1e-9])
    step = (width - 2) / n
    bars = []
    for k, (e, a) in enumerate(zip(column.expected, column.observed, strict=True)):
        x = 1 + k * step
        for offset, share, colour in ((0.0, e, "#9bb7d4"), (step / 2, a, "#e07b39")):
            h = (height - pad) * share / top
            bars.append(
                f'<rect x="{x + offset:.1f}" y="{height - h:.1f}" width="{step / 2 - 1:.1f}" '
                f'height="{h:.1f}" fill="{colour}"><title>{share:.3f}</title></rect>'
            )
    cuts = profile_column.cuts
    span = f"{cuts[0]:.3g} .. {cuts[-1]:.3g}" if cuts else "no cuts"
    if profile_column.categories is not None:  # a bar a frequent category, then the rest
        span = ", ".join([*profile_column.categories, "the rest"])
    if column.unseen:
        span += f"; unseen {column.unseen:.1%}"
    if column.missing:
        span += f"; missing {column.missing:.1%}"
    return (
        f'<figure><svg class="chart" width="{width}" height="{height}" '
        f'role="img" aria-label="{html.escape(column.name)}">{"".join(bars)}</svg>'
        f"<figcaption>{html.escape(column.name)}: PSI {column.psi:.3f} ({span})"
        "</figcaption></figure>"
    )
