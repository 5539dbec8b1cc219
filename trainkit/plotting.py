"""Pictures: PNGs drawn by matplotlib, and a plot made of text for the terminal.

matplotlib is imported only when a picture is made (``--help`` and a run's start do not
wait for it), through its object-oriented interface with the Agg canvas: no pyplot state,
no window, the same on a laptop and a server.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence

# One colour per run, in this order (matplotlib's default cycle, "tab10").
COLOURS = [
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
]


def format_lr(lr: float) -> str:
    """An lr as a short label: scientific when small (``1.0e-04``), else ``0.05``."""
    if lr != 0 and abs(lr) < 1e-2:
        return f"{lr:.1e}"
    return f"{lr:.3g}"


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def png_bytes(figure) -> bytes:
    """A figure of this module as PNG bytes (written by the caller, never over a file)."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def lr_figure(lrs: Sequence[float], title: str, log_scale: bool = False):
    """The lr of every optimizer step (800x400 pixels): steps on x, the lr on y from 0 (or
    on a log scale). Raises ValueError on an empty curve."""
    from matplotlib.ticker import MaxNLocator

    if not lrs:
        raise ValueError("no lr values to plot")
    figure = _figure(8, 4)
    axes = figure.add_subplot()
    axes.plot(range(1, len(lrs) + 1), lrs, color=COLOURS[0], linewidth=1.5)
    axes.set_title(title, fontsize=10)
    axes.set_xlabel("optimizer step")
    axes.set_ylabel("learning rate")
    axes.set_xlim(1, max(len(lrs), 2))
    axes.xaxis.set_major_locator(MaxNLocator(nbins=8, integer=True, steps=[1, 2, 2.5, 5, 10]))
    if log_scale and min(lrs) > 0:
        axes.set_yscale("log")
    else:
        axes.set_ylim(0, max(lrs) * 1.05 or 1)
    axes.grid(alpha=0.3)
    return figure


def lr_find_figure(
    lrs: Sequence[float],
    losses: Sequence[float],
    smoothed: Sequence[float],
    suggestion: float,
    title: str,
):
    """The lr range test (800x400 pixels): each step's loss (faint) and the smoothed loss
    against the lr on a log scale, the suggested lr marked with a dashed line."""
    figure = _figure(8, 4)
    axes = figure.add_subplot()
    axes.plot(lrs, losses, color=COLOURS[0], alpha=0.25, linewidth=1, label="loss")
    axes.plot(lrs, smoothed, color=COLOURS[0], linewidth=1.8, label="smoothed loss")
    axes.axvline(suggestion, color=COLOURS[3], linestyle="--", linewidth=1.2,
                 label=f"suggested lr {format_lr(suggestion)}")  # fmt: skip
    axes.set_xscale("log")
    axes.set_title(title, fontsize=10)
    axes.set_xlabel("learning rate (log scale)")
    axes.set_ylabel("training loss")
    # The curve's end can jump far up as it diverges: show the range before that.
    top = max(smoothed[: max(1, len(smoothed) - 1)]) * 1.1
    bottom = min(min(smoothed), min(losses))
    if math.isfinite(top) and top > bottom:
        axes.set_ylim(bottom - 0.05 * (top - bottom), top)
    axes.grid(alpha=0.3, which="both")
    axes.legend(fontsize=8, loc="best")
    return figure


# A legend's label beyond this many characters (a run's overrides, say) is cut short: a
# longer one would push the plot off the figure.
LEGEND_LABEL_LIMIT = 60


def _short(label: str) -> str:
    return label if len(label) <= LEGEND_LABEL_LIMIT else label[: LEGEND_LABEL_LIMIT - 1] + "…"


def curves_figure(
    curves: Sequence[tuple[str, Sequence[tuple[int, float]]]], title: str, ylabel: str
):
    """Each ``(label, [(epoch, value), ...])`` as a line in its own colour, with a legend
    (800 pixels wide); a value that is not finite leaves a gap."""
    from matplotlib.ticker import MaxNLocator

    figure = _figure(8, 4.5)
    axes = figure.add_subplot()
    for index, (label, points) in enumerate(curves):
        epochs = [epoch for epoch, _ in points]
        values = [value if math.isfinite(value) else math.nan for _, value in points]
        axes.plot(
            epochs, values, marker="o", markersize=3, color=COLOURS[index % 10], label=_short(label)
        )
    axes.set_title(title, fontsize=10)
    axes.set_xlabel("epoch")
    axes.set_ylabel(ylabel)
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.grid(alpha=0.3)
    if curves:
        axes.legend(fontsize=8, loc="best")
    return figure


def band_figure(
    groups: Sequence[tuple[str, Sequence[tuple[int, float, float]]]], title: str, ylabel: str
):
    """Each ``(label, [(epoch, mean, std), ...])`` as its mean line with a shaded band of
    ± one standard deviation, in its own colour, with a legend (800 pixels wide)."""
    from matplotlib.ticker import MaxNLocator

    figure = _figure(8, 4.5)
    axes = figure.add_subplot()
    for index, (label, rows) in enumerate(groups):
        colour = COLOURS[index % 10]
        epochs = [epoch for epoch, _, _ in rows]
        means = [mean for _, mean, _ in rows]
        axes.plot(epochs, means, marker="o", markersize=3, color=colour, label=_short(label))
        axes.fill_between(
            epochs,
            [mean - std for _, mean, std in rows],
            [mean + std for _, mean, std in rows],
            color=colour,
            alpha=0.2,
            linewidth=0,
        )
    axes.set_title(title, fontsize=10)
    axes.set_xlabel("epoch")
    axes.set_ylabel(f"{ylabel} (mean ± std)")
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.grid(alpha=0.3)
    if groups:
        axes.legend(fontsize=8, loc="best")
    return figure


def confusion_matrix_figure(matrix: Sequence[Sequence[int]], class_names: Sequence[str]):
    """A confusion matrix (rows: true class, columns: predicted) as a matplotlib figure, at
    a size that reads (for TensorBoard's Images tab): cells shaded by their share of the
    row, counts written in, the class names on both axes."""
    import numpy as np

    counts = np.asarray(matrix, dtype=np.float64)
    classes = len(counts)
    side = min(12.0, max(5.0, 0.5 * classes + 2))
    figure = _figure(side, side)
    axes = figure.add_subplot()
    share = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    axes.imshow(share, cmap="Blues", vmin=0, vmax=1)
    names = [str(name) for name in class_names[:classes]]
    axes.set_xticks(range(classes), names, rotation=45 if max(map(len, names)) > 3 else 0)
    axes.set_yticks(range(classes), names)
    axes.set_xlabel("predicted class")
    axes.set_ylabel("true class")
    if classes <= 30:
        for true in range(classes):
            for predicted in range(classes):
                if counts[true, predicted]:
                    ink = "white" if share[true, predicted] > 0.5 else "black"
                    axes.text(predicted, true, int(counts[true, predicted]), ha="center",
                              va="center", color=ink, fontsize=8)  # fmt: skip
    return figure


def terminal_plot(
    values: list[float],
    width: int = 70,
    height: int = 12,
    x_ends: tuple[str, str] | None = None,
    label=format_lr,
    log_scale: bool = False,
) -> str:
    """``values`` as text: ``height`` rows of ``width`` columns, the max labelled (by
    ``label``) on the top row and the min on the bottom one, then an axis line and its two
    ends (``x_ends``; by default 0 and the count of steps). ``log_scale``: rows by the log
    of the values, a value of 0 (a warmup's start) on the bottom row with the least above it.

    Each column shows the value at its share of the curve. Raises ValueError on an empty
    curve or a plot smaller than 2x2.
    """
    if not values:
        raise ValueError("no values to plot")
    if width < 2 or height < 2:
        raise ValueError(f"a plot needs at least 2x2 characters; got {width}x{height}")
    high, low = max(values), min(values)
    last = len(values) - 1
    logarithmic = log_scale and high > 0
    if logarithmic:
        low = min(value for value in values if value > 0)

    def level(value: float) -> float:
        return math.log10(max(value, low)) if logarithmic else value

    def to_row(value: float) -> int:  # row 0 is the top
        top, bottom = level(high), level(low)
        return 0 if top == bottom else round((top - level(value)) / (top - bottom) * (height - 1))

    grid = [[" "] * width for _ in range(height)]
    previous = None
    for column in range(width):
        row = to_row(values[round(last * column / (width - 1))])
        # Fill a jump from the previous column, so a step down reads as a line.
        top, bottom = (row, row) if previous is None else sorted((previous, row))
        for filled in range(top, bottom + 1):
            grid[filled][column] = "•"
        previous = row

    labels = [label(high) if row == 0 else "" for row in range(height)]
    labels[-1] = label(low)
    pad = max(len(text) for text in labels)
    lines = [
        f"{text:>{pad}} {'┤' if text else '│'}{''.join(cells)}"
        for text, cells in zip(labels, grid, strict=True)
    ]
    lines.append(f"{'':>{pad}} └{'─' * width}")
    left, right = x_ends or ("0", f"{len(values)} steps")
    lines.append(f"{'':>{pad}}  {left}{right:>{max(width - len(left), len(right))}}")
    return "\n".join(lines)
