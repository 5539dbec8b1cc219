"""Plots of a learning-rate curve: a PNG drawn with Pillow and a plot made of text.

Pillow comes with torchvision; matplotlib is deliberately not a dependency.
"""

from __future__ import annotations

from pathlib import Path
from typing import BinaryIO

WIDTH, HEIGHT = 800, 400
# Plot area margins in pixels: room for the y labels on the left, x labels below.
LEFT, RIGHT, TOP, BOTTOM = 80, 20, 30, 40
Y_TICKS, X_TICKS = 5, 6


def format_lr(lr: float) -> str:
    """An lr as a short label: scientific when small (``1.0e-04``), else ``0.05``."""
    if lr != 0 and abs(lr) < 1e-2:
        return f"{lr:.1e}"
    return f"{lr:.3g}"


def _y_range(lrs: list[float]) -> tuple[float, float]:
    low, high = min(lrs), max(lrs)
    if high == low:  # a flat curve: put it in the middle of the plot
        pad = abs(high) * 0.1 or 1e-3
        return low - pad, high + pad
    return low, high


def write_lr_png(lrs: list[float], path: str | Path | BinaryIO, title: str):
    """Draw ``lrs`` (one per optimizer step) as a line plot, 800x400 pixels, into ``path``.

    Returns the path written. Raises ValueError on an empty curve.
    """
    from PIL import Image, ImageDraw, ImageFont

    if not lrs:
        raise ValueError("no lr values to plot")
    image = Image.new("RGB", (WIDTH, HEIGHT), "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    x0, x1, y0, y1 = LEFT, WIDTH - RIGHT, TOP, HEIGHT - BOTTOM  # y0 is the top
    low, high = _y_range(lrs)
    last = max(len(lrs) - 1, 1)

    def to_x(step: float) -> float:
        return x0 + (x1 - x0) * step / last

    def to_y(lr: float) -> float:
        return y1 - (y1 - y0) * (lr - low) / (high - low)

    # --- axes, ticks and labels ---
    draw.text((WIDTH / 2, TOP / 2), title, fill="black", font=font, anchor="mm")
    for tick in range(Y_TICKS):
        lr = low + (high - low) * tick / (Y_TICKS - 1)
        y = to_y(lr)
        draw.line([(x0, y), (x1, y)], fill=(230, 230, 230))
        draw.line([(x0 - 5, y), (x0, y)], fill="black")
        draw.text((x0 - 8, y), format_lr(lr), fill="black", font=font, anchor="rm")
    for tick in range(X_TICKS):
        step = round(last * tick / (X_TICKS - 1))
        x = to_x(step)
        draw.line([(x, y1), (x, y1 + 5)], fill="black")
        draw.text((x, y1 + 8), str(step), fill="black", font=font, anchor="mt")
    draw.text(((x0 + x1) / 2, HEIGHT - 6), "step", fill="black", font=font, anchor="mb")
    draw.line([(x0, y0), (x0, y1), (x1, y1)], fill="black")

    # --- the curve ---
    points = [(to_x(step), to_y(lr)) for step, lr in enumerate(lrs)]
    if len(points) == 1:
        points.append((x1, points[0][1]))
    draw.line(points, fill=(31, 119, 180), width=2)

    image.save(path, format="PNG")  # (a path, or a file object)
    return path


def terminal_lr_plot(lrs: list[float], width: int = 70, height: int = 12) -> str:
    """``lrs`` as text: ``height`` rows of ``width`` columns, the max lr labelled on the
    top row and the min on the bottom one, then an axis line and the step count.

    Each column shows the lr at its share of the run. Raises ValueError on an empty curve
    or a plot smaller than 2x2.
    """
    if not lrs:
        raise ValueError("no lr values to plot")
    if width < 2 or height < 2:
        raise ValueError(f"a plot needs at least 2x2 characters; got {width}x{height}")
    high, low = max(lrs), min(lrs)
    last = len(lrs) - 1

    def to_row(lr: float) -> int:  # row 0 is the top
        return 0 if high == low else round((high - lr) / (high - low) * (height - 1))

    grid = [[" "] * width for _ in range(height)]
    previous = None
    for column in range(width):
        row = to_row(lrs[round(last * column / (width - 1))])
        # Fill a jump from the previous column, so a step down reads as a line.
        top, bottom = (row, row) if previous is None else sorted((previous, row))
        for filled in range(top, bottom + 1):
            grid[filled][column] = "•"
        previous = row

    labels = [format_lr(high) if row == 0 else "" for row in range(height)]
    labels[-1] = format_lr(low)
    pad = max(len(label) for label in labels)
    lines = [
        f"{label:>{pad}} {'┤' if label else '│'}{''.join(cells)}"
        for label, cells in zip(labels, grid, strict=True)
    ]
    lines.append(f"{'':>{pad}} └{'─' * width}")
    steps = f"{len(lrs)} steps"
    lines.append(f"{'':>{pad}}  0{steps:>{max(width - 1, len(steps))}}")
    return "\n".join(lines)


def confusion_matrix_image(matrix: list[list[int]], class_names: list[str]):
    """A confusion matrix (rows: true class, columns: predicted) as an RGB uint8 array of
    shape (height, width, 3): cells shaded by their share of the row, counts written in."""
    import numpy as np
    from PIL import Image, ImageDraw, ImageFont

    counts = np.asarray(matrix, dtype=np.float64)
    classes = len(counts)
    cell = max(16, min(40, 640 // max(classes, 1)))
    margin = 60  # room for the class names and the axis titles
    size = margin + cell * classes + 10
    image = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    row_share = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    for true in range(classes):
        for predicted in range(classes):
            x, y = margin + predicted * cell, margin + true * cell
            shade = int(255 * (1 - row_share[true, predicted]))
            draw.rectangle([x, y, x + cell - 1, y + cell - 1], fill=(shade, shade, 255))
            if cell >= 24 and counts[true, predicted]:
                ink = "white" if shade < 128 else "black"
                text = str(int(counts[true, predicted]))
                draw.text((x + cell / 2, y + cell / 2), text, fill=ink, font=font, anchor="mm")
    for index, name in enumerate(class_names[:classes]):
        middle = margin + index * cell + cell / 2
        draw.text((margin - 4, middle), name[:8], fill="black", font=font, anchor="rm")
        draw.text((middle, margin - 4), name[:4], fill="black", font=font, anchor="mb")
    draw.text((4, 4), "rows: true, columns: predicted", fill="black", font=font)
    return np.asarray(image)
