"""The Pareto plot, as a PNG (matplotlib, Agg) and as a self-contained interactive HTML page.

Every completed trial is drawn in grey; the front is highlighted, joined as a staircase, labelled
with trial numbers (placed so they do not collide) and listed beside the plot; each front member
carries its drop's 95% interval. The view is zoomed on the front: trials far slower (CPU-float) or
far worse (broken) are drawn at the edge and the whole study is an inset. x = the target cost
model's estimated latency (ms), y = mAP drop (points). The HTML page is inline SVG
with a few lines of inline JavaScript for the hover box (no CDN, no external file); each point
also carries an SVG ``<title>`` so the hover works without JavaScript.
"""

from __future__ import annotations

import html
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass

from autoq.plan import percentile_interval
from autoq.results.front import front_trials, pareto_rows
from autoq.trial_record import BOOT_ATTR

__all__ = ["TrialPoint", "axis_titles", "pareto_html", "pareto_png", "pareto_svg", "trial_points", "view_window"]


@dataclass(frozen=True)
class TrialPoint:
    trial: int
    map: float
    map_drop: float  # 0..1 scale (as stored); plotted in points
    latency_ms: float
    front: bool
    drop_lo: float | None = None  # 95% paired bootstrap interval of map_drop (0..1)
    drop_hi: float | None = None
    same_as: int | None = None  # front member not distinguishable from this faster one


def trial_points(study, project=None) -> list[TrialPoint]:
    """Every completed trial of ``study`` with its front membership (`autoq.results.front.front_trials`)
    and its drop's interval."""
    from optuna.trial import TrialState

    front = {r.trial: r for r in pareto_rows(study, project.quantizable_names, project)} if project is not None \
        else {t.number: None for t in front_trials(study, project)}
    out = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        if t.values is None or len(t.values) < 2:
            continue
        boot = t.user_attrs.get(BOOT_ATTR)
        lo, hi = percentile_interval(boot) if boot else (None, None)
        row = front.get(t.number)
        out.append(TrialPoint(t.number, float(t.user_attrs.get("map", math.nan)), float(t.values[0]),
                              float(t.values[1]), t.number in front, lo, hi, row.same_as if row else None))
    return out


def _front_sorted(points: Sequence[TrialPoint]) -> list[TrialPoint]:
    return sorted((p for p in points if p.front), key=lambda p: (p.latency_ms, p.map_drop))


def axis_titles(target: str = "") -> tuple[str, str]:
    """x and y axis titles: units, and that latency is the target cost model's estimate."""
    x = f"estimated latency, {target} cost model (ms)" if target else "estimated latency, cost model (ms)"
    return x, "mAP drop vs float (points)"


def view_window(points: Sequence[TrialPoint]) -> tuple[float, float, float, float]:
    """(x0, x1, y0, y1) around the front and its intervals (y in points): trials far slower (CPU-float)
    or far worse (broken) than every front member fall outside and are drawn clipped at the edge."""
    front = _front_sorted(points) or list(points)
    if not front:
        return 0.0, 1.0, 0.0, 1.0
    xs = [p.latency_ms for p in front]
    ys = [100 * p.map_drop for p in front]
    ys += [100 * v for p in front for v in (p.drop_lo, p.drop_hi) if v is not None]
    x0, x1 = min(xs), max(xs)
    y0, y1 = min(ys + [0.0]), max(ys)
    if x1 - x0 <= 1e-9:
        x0, x1 = x0 * 0.9 - 1e-3, x1 * 1.1 + 1e-3
    if y1 - y0 <= 1e-9:
        y0, y1 = y0 - 0.5, y1 + 0.5
    # room for the nearby grey trials that make the trade-off visible: 25% beyond the front each way
    dx, dy = 0.25 * (x1 - x0), 0.25 * (y1 - y0)
    return x0 - dx, x1 + dx, y0 - 0.1 * (y1 - y0), y1 + dy


def _place_labels(ax, fig, anchors: list[tuple[float, float]], texts: list[str], fontsize: float) -> None:
    """Labels next to their points without overlapping each other or other points (greedy, in pixels)."""
    fig.canvas.draw()
    to_px = ax.transData.transform
    px = [tuple(to_px(a)) for a in anchors]
    scale = fig.dpi / 72.0
    placed: list[tuple[float, float, float, float]] = []
    offsets = [(5, 4), (5, -12), (-5, 4), (-5, -12), (5, 14), (-5, 14), (5, -22), (-5, -22), (14, -4), (-14, -4),
               (5, 26), (-5, 26), (5, -34), (-5, -34)]
    for (x, y), text in zip(px, texts):
        w, h = 0.62 * fontsize * len(text) * scale, fontsize * 1.2 * scale
        choice = None
        for ox, oy in offsets:
            lx = x + ox * scale if ox >= 0 else x + ox * scale - w
            ly = y + oy * scale
            box = (lx, ly, lx + w, ly + h)
            clash = any(not (box[2] < b[0] or box[0] > b[2] or box[3] < b[1] or box[1] > b[3]) for b in placed)
            clash = clash or any(box[0] - 3 < qx < box[2] + 3 and box[1] - 3 < qy < box[3] + 3 for qx, qy in px)
            if not clash:
                choice = (ox, oy, box)
                break
        if choice is None:
            ox, oy = offsets[0]
            lx = x + ox * scale
            choice = (ox, oy, (lx, y + oy * scale, lx + w, y + oy * scale + h))
        ox, oy, box = choice
        placed.append(box)
        ax.annotate(text, xy=ax.transData.inverted().transform((x, y)), xytext=(ox, oy), textcoords="offset points",
                    fontsize=fontsize, ha="left" if ox >= 0 else "right", va="bottom", zorder=6,
                    arrowprops=dict(arrowstyle="-", lw=0.4, color="#555") if abs(oy) > 12 else None)


def pareto_png(points: Sequence[TrialPoint], *, title: str = "Pareto front", dpi: int = 110, target: str = "") -> bytes:
    """The plot as PNG bytes (matplotlib, Agg): zoomed on the front (trials outside drawn at the edge,
    the whole study in an inset), the drop's 95% interval as bars, every front member labelled, and a
    table of the front beside it."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    front = _front_sorted(points)
    fig = Figure(figsize=(11.0, 5.6), dpi=dpi)
    ax = fig.add_axes((0.07, 0.11, 0.55, 0.8))
    x0, x1, y0, y1 = view_window(points)
    rest = [p for p in points if not p.front]
    inside = [p for p in rest if x0 <= p.latency_ms <= x1 and y0 <= 100 * p.map_drop <= y1]
    outside = [p for p in rest if p not in inside]
    if inside:
        ax.scatter([p.latency_ms for p in inside], [100 * p.map_drop for p in inside], s=14, c="#b0b0b0",
                   label="other trials", zorder=2)
    if outside:
        cx = [min(max(p.latency_ms, x0), x1) for p in outside]
        cy = [min(max(100 * p.map_drop, y0), y1) for p in outside]
        ax.scatter(cx, cy, s=18, marker="^", facecolors="none", edgecolors="#999", zorder=2,
                   label=f"{len(outside)} trials outside the view (at the edge)")
    if front:
        xs, ys = [p.latency_ms for p in front], [100 * p.map_drop for p in front]
        ax.step(xs, ys, where="post", color="#d62728", lw=1.2, alpha=0.5, zorder=3)
        err = [(100 * (p.map_drop - p.drop_lo), 100 * (p.drop_hi - p.map_drop)) if p.drop_lo is not None else (0, 0)
               for p in front]
        if any(e != (0, 0) for e in err):
            ax.errorbar(xs, ys, yerr=list(zip(*err)), fmt="none", ecolor="#d62728", elinewidth=0.8, capsize=2,
                        alpha=0.7, zorder=3, label="95% interval of the drop")
        distinct = [p for p in front if p.same_as is None]
        same = [p for p in front if p.same_as is not None]
        ax.scatter([p.latency_ms for p in distinct], [100 * p.map_drop for p in distinct], s=36, c="#d62728",
                   edgecolors="black", linewidths=0.5, label=f"front ({len(front)})", zorder=4)
        if same:
            ax.scatter([p.latency_ms for p in same], [100 * p.map_drop for p in same], s=36, c="white",
                       edgecolors="#d62728", linewidths=1.2, zorder=4,
                       label="front, drop not distinguishable from a faster member's")
    ax.axhline(0, color="#666", lw=0.6, zorder=1)
    ax.set_xlim(x0, x1)
    ax.set_ylim(y0, y1)
    xt, yt = axis_titles(target)
    ax.set_xlabel(xt)
    ax.set_ylabel(yt)
    ax.set_title(title, fontsize=10)
    ax.grid(True, alpha=0.3)
    if points:
        ax.legend(loc="upper right", fontsize=7)
    if front:
        _place_labels(ax, fig, [(p.latency_ms, 100 * p.map_drop) for p in front], [f"#{p.trial}" for p in front], 8)
    if outside:  # the whole study, small, with the zoomed window marked
        ins = fig.add_axes((0.66, 0.62, 0.32, 0.28))
        ins.scatter([p.latency_ms for p in rest], [100 * p.map_drop for p in rest], s=5, c="#b0b0b0")
        ins.scatter([p.latency_ms for p in front], [100 * p.map_drop for p in front], s=7, c="#d62728")
        ins.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, ec="black", lw=0.8))
        ins.set_title("all trials (box: the view)", fontsize=7)
        ins.tick_params(labelsize=6)
    lines = ["front (by latency)", f"{'trial':>5} {'drop pt':>7} {'95% int.':>13} {'ms':>8}"]
    for p in front[:24]:
        ci = "" if p.drop_lo is None else f"[{100 * p.drop_lo:.2f},{100 * p.drop_hi:.2f}]"
        lines.append(f"{'#' + str(p.trial):>5} {100 * p.map_drop:>7.2f} {ci:>13} {p.latency_ms:>8.3f}"
                     + ("" if p.same_as is None else f" ~#{p.same_as}"))
    if len(front) > 24:
        lines.append(f"... {len(front) - 24} more (pareto.csv)")
    fig.text(0.66, 0.56 if outside else 0.9, "\n".join(lines), family="monospace", fontsize=7, va="top")
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def pareto_svg(points: Sequence[TrialPoint], *, width: int = 760, height: int = 440, target: str = "") -> str:
    """Inline SVG scatter zoomed like `pareto_png` (trials outside the view drawn hollow at the edge);
    every point has ``data-*`` attributes and a ``<title>`` (hover text)."""
    ml, mr, mt, mb = 64, 20, 20, 48
    x0, x1, y0, y1 = view_window(points)

    def sx(v: float) -> float:
        return ml + (min(max(v, x0), x1) - x0) / (x1 - x0) * (width - ml - mr)

    def sy(v: float) -> float:
        return height - mb - (min(max(v, y0), y1) - y0) / (y1 - y0) * (height - mt - mb)

    xt, yt = axis_titles(target)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" class="pareto" '
             f'font-family="sans-serif" font-size="11">',
             f'<rect x="{ml}" y="{mt}" width="{width - ml - mr}" height="{height - mt - mb}" fill="white" stroke="#999"/>']
    for i in range(6):
        fx, fy = x0 + (x1 - x0) * i / 5, y0 + (y1 - y0) * i / 5
        parts.append(f'<line x1="{sx(fx):.1f}" y1="{mt}" x2="{sx(fx):.1f}" y2="{height - mb}" stroke="#eee"/>')
        parts.append(f'<line x1="{ml}" y1="{sy(fy):.1f}" x2="{width - mr}" y2="{sy(fy):.1f}" stroke="#eee"/>')
        parts.append(f'<text x="{sx(fx):.1f}" y="{height - mb + 16}" text-anchor="middle">{fx:.3g}</text>')
        parts.append(f'<text x="{ml - 6}" y="{sy(fy) + 4:.1f}" text-anchor="end">{fy:.3g}</text>')
    parts.append(f'<text x="{(ml + width - mr) / 2}" y="{height - 10}" text-anchor="middle">{html.escape(xt)}</text>')
    parts.append(f'<text x="14" y="{(mt + height - mb) / 2}" text-anchor="middle" '
                 f'transform="rotate(-90 14 {(mt + height - mb) / 2})">{html.escape(yt)}</text>')
    front = _front_sorted(points)
    if len(front) > 1:
        path = []
        for a, b in zip(front, front[1:]):
            path += [f"{sx(a.latency_ms):.1f},{sy(100 * a.map_drop):.1f}", f"{sx(b.latency_ms):.1f},{sy(100 * a.map_drop):.1f}"]
        path.append(f"{sx(front[-1].latency_ms):.1f},{sy(100 * front[-1].map_drop):.1f}")
        parts.append(f'<polyline points="{" ".join(path)}" fill="none" stroke="#d62728" stroke-opacity="0.6"/>')
    for p in front:
        if p.drop_lo is not None:
            parts.append(f'<line x1="{sx(p.latency_ms):.1f}" x2="{sx(p.latency_ms):.1f}" y1="{sy(100 * p.drop_lo):.1f}" '
                         f'y2="{sy(100 * p.drop_hi):.1f}" stroke="#d62728" stroke-opacity="0.6"/>')
    for p in sorted(points, key=lambda p: p.front):  # front drawn last, on top
        ci = "" if p.drop_lo is None else f" [{100 * p.drop_lo:.2f}, {100 * p.drop_hi:.2f}]"
        tip = f"trial {p.trial}: mAP {100 * p.map:.2f}, drop {100 * p.map_drop:.2f} pt{ci}, {p.latency_ms:.3f} ms (estimated)"
        tip += " (Pareto front)" if p.front else ""
        tip += "" if p.same_as is None else f", not distinguishable from faster trial {p.same_as}"
        out = not (x0 <= p.latency_ms <= x1 and y0 <= 100 * p.map_drop <= y1)
        color, r = ("#d62728", 5) if p.front else ("#a0a0a0", 3.5)
        fill = "white" if out or p.same_as is not None else color
        cx, cy = sx(p.latency_ms), sy(100 * p.map_drop)
        parts.append(
            f'<circle class="pt" cx="{cx:.1f}" cy="{cy:.1f}" r="{r}" fill="{fill}" stroke="{"black" if p.front else color}" '
            f'stroke-width="{0.6 if p.front or out else 0}" data-tip="{html.escape(tip)}"><title>{html.escape(tip)}</title></circle>'
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


def pareto_html(points: Sequence[TrialPoint], *, title: str = "Pareto front", table: str = "", target: str = "") -> str:
    """A self-contained page: the SVG scatter with hover (trial, mAP, drop, latency) and ``table`` HTML below."""
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        "<style>body{font-family:sans-serif;margin:16px}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}</style></head><body>"
        f"<h2>{html.escape(title)}</h2><p>grey: every completed trial; red: the Pareto front "
        "(minimize drop and latency). Hover a point for its trial number, mAP and latency.</p>"
        f"{pareto_svg(points, target=target)}{table}{_HOVER_JS}</body></html>"
    )
