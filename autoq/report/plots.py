"""The Pareto plot, as a PNG (matplotlib, Agg) and as a self-contained interactive HTML page.

Every completed trial is drawn in grey; the front is highlighted, joined as a staircase and
labelled with trial numbers. x = latency (ms), y = mAP drop (points). The HTML page is inline SVG
with a few lines of inline JavaScript for the hover box (no CDN, no external file); each point
also carries an SVG ``<title>`` so the hover works without JavaScript.
"""

from __future__ import annotations

import html
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass

from autoq.results.front import front_trials

__all__ = ["TrialPoint", "pareto_html", "pareto_png", "pareto_svg", "trial_points"]


@dataclass(frozen=True)
class TrialPoint:
    trial: int
    map: float
    map_drop: float  # 0..1 scale (as stored); plotted in points
    latency_ms: float
    front: bool


def trial_points(study, project=None) -> list[TrialPoint]:
    """Every completed trial of ``study`` with its front membership (`autoq.results.front.front_trials`)."""
    from optuna.trial import TrialState

    front = {t.number for t in front_trials(study, project)}
    out = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        if t.values is None or len(t.values) < 2:
            continue
        out.append(TrialPoint(t.number, float(t.user_attrs.get("map", math.nan)), float(t.values[0]),
                              float(t.values[1]), t.number in front))
    return out


def _front_sorted(points: Sequence[TrialPoint]) -> list[TrialPoint]:
    return sorted((p for p in points if p.front), key=lambda p: (p.latency_ms, p.map_drop))


def pareto_png(points: Sequence[TrialPoint], *, title: str = "Pareto front", dpi: int = 110) -> bytes:
    """The plot as PNG bytes (matplotlib with the Agg backend; no display needed)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.5, 4.8), dpi=dpi)
    ax = fig.add_subplot(1, 1, 1)
    rest = [p for p in points if not p.front]
    front = _front_sorted(points)
    if rest:
        ax.scatter([p.latency_ms for p in rest], [100 * p.map_drop for p in rest], s=16, c="#b0b0b0",
                   label=f"trials ({len(points)})", zorder=2)
    if front:
        xs, ys = [p.latency_ms for p in front], [100 * p.map_drop for p in front]
        ax.step(xs, ys, where="post", color="#d62728", lw=1.2, alpha=0.6, zorder=3)
        ax.scatter(xs, ys, s=36, c="#d62728", edgecolors="black", linewidths=0.5, label=f"front ({len(front)})",
                   zorder=4)
        for p in front:
            ax.annotate(f"#{p.trial}", (p.latency_ms, 100 * p.map_drop), textcoords="offset points", xytext=(4, 4),
                        fontsize=8, zorder=5)
    ax.set_xlabel("latency_ms")
    ax.set_ylabel("map_drop (mAP points)")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    if points:
        ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def pareto_svg(points: Sequence[TrialPoint], *, width: int = 760, height: int = 440) -> str:
    """Inline SVG scatter; every point has ``data-*`` attributes and a ``<title>`` (hover text)."""
    ml, mr, mt, mb = 64, 20, 20, 48
    xs = [p.latency_ms for p in points] or [0.0, 1.0]
    ys = [100 * p.map_drop for p in points] or [0.0, 1.0]
    x0, x1 = min(xs), max(xs)
    y0, y1 = min(ys + [0.0]), max(ys)
    if x1 - x0 <= 0:
        x0, x1 = x0 - 0.5, x1 + 0.5
    if y1 - y0 <= 0:
        y0, y1 = y0 - 0.5, y1 + 0.5
    pad_x, pad_y = 0.05 * (x1 - x0), 0.05 * (y1 - y0)
    x0, x1, y0, y1 = x0 - pad_x, x1 + pad_x, y0 - pad_y, y1 + pad_y

    def sx(v: float) -> float:
        return ml + (v - x0) / (x1 - x0) * (width - ml - mr)

    def sy(v: float) -> float:
        return height - mb - (v - y0) / (y1 - y0) * (height - mt - mb)

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" class="pareto" '
             f'font-family="sans-serif" font-size="11">',
             f'<rect x="{ml}" y="{mt}" width="{width - ml - mr}" height="{height - mt - mb}" fill="white" stroke="#999"/>']
    for i in range(6):
        fx, fy = x0 + (x1 - x0) * i / 5, y0 + (y1 - y0) * i / 5
        parts.append(f'<line x1="{sx(fx):.1f}" y1="{mt}" x2="{sx(fx):.1f}" y2="{height - mb}" stroke="#eee"/>')
        parts.append(f'<line x1="{ml}" y1="{sy(fy):.1f}" x2="{width - mr}" y2="{sy(fy):.1f}" stroke="#eee"/>')
        parts.append(f'<text x="{sx(fx):.1f}" y="{height - mb + 16}" text-anchor="middle">{fx:.3g}</text>')
        parts.append(f'<text x="{ml - 6}" y="{sy(fy) + 4:.1f}" text-anchor="end">{fy:.3g}</text>')
    parts.append(f'<text x="{(ml + width - mr) / 2}" y="{height - 10}" text-anchor="middle">latency_ms</text>')
    parts.append(f'<text x="14" y="{(mt + height - mb) / 2}" text-anchor="middle" '
                 f'transform="rotate(-90 14 {(mt + height - mb) / 2})">map_drop (mAP points)</text>')
    front = _front_sorted(points)
    if len(front) > 1:
        path = []
        for a, b in zip(front, front[1:]):
            path += [f"{sx(a.latency_ms):.1f},{sy(100 * a.map_drop):.1f}", f"{sx(b.latency_ms):.1f},{sy(100 * a.map_drop):.1f}"]
        path.append(f"{sx(front[-1].latency_ms):.1f},{sy(100 * front[-1].map_drop):.1f}")
        parts.append(f'<polyline points="{" ".join(path)}" fill="none" stroke="#d62728" stroke-opacity="0.6"/>')
    for p in sorted(points, key=lambda p: p.front):  # front drawn last, on top
        tip = f"trial {p.trial}: mAP {100 * p.map:.2f}, drop {100 * p.map_drop:.2f} pt, {p.latency_ms:.3f} ms"
        tip += " (Pareto front)" if p.front else ""
        color, r = ("#d62728", 5) if p.front else ("#a0a0a0", 3.5)
        cx, cy = sx(p.latency_ms), sy(100 * p.map_drop)
        parts.append(
            f'<circle class="pt" cx="{cx:.1f}" cy="{cy:.1f}" r="{r}" fill="{color}" stroke="black" '
            f'stroke-width="{0.6 if p.front else 0}" data-tip="{html.escape(tip)}"><title>{html.escape(tip)}</title></circle>'
        )
        if p.front:
            parts.append(f'<text x="{cx + 6:.1f}" y="{cy - 6:.1f}">#{p.trial}</text>')
    parts.append("</svg>")
    return "\n".join(parts)


_HOVER_JS = """
<div id="tip" style="position:fixed;display:none;background:#222;color:#fff;padding:4px 8px;border-radius:4px;
font:12px sans-serif;pointer-events:none"></div>
<script>
(function () {
  var tip = document.getElementById('tip');
  document.querySelectorAll('circle.pt').forEach(function (c) {
    c.addEventListener('mousemove', function (e) {
      tip.textContent = c.getAttribute('data-tip'); tip.style.display = 'block';
      tip.style.left = (e.clientX + 12) + 'px'; tip.style.top = (e.clientY + 12) + 'px';
    });
    c.addEventListener('mouseleave', function () { tip.style.display = 'none'; });
  });
})();
</script>
"""


def pareto_html(points: Sequence[TrialPoint], *, title: str = "Pareto front", table: str = "") -> str:
    """A self-contained page: the SVG scatter with hover (trial, mAP, drop, latency) and ``table`` HTML below."""
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        "<style>body{font-family:sans-serif;margin:16px}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}</style></head><body>"
        f"<h2>{html.escape(title)}</h2><p>grey: every completed trial; red: the Pareto front "
        "(minimize drop and latency). Hover a point for its trial number, mAP and latency.</p>"
        f"{pareto_svg(points)}{table}{_HOVER_JS}</body></html>"
    )
