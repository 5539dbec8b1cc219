"""trainkit.plotting: figures drawn by matplotlib, checked through what they hold."""

from __future__ import annotations

import numpy as np

from trainkit.plotting import confusion_matrix_figure, png_bytes


def test_the_confusion_matrix_names_the_classes_and_shades_by_row_share():
    matrix = [[8, 2, 0], [1, 1, 0], [0, 0, 5]]
    names = ["cat", "dog", "emu"]
    figure = confusion_matrix_figure(matrix, names)
    (axes,) = figure.axes
    assert [t.get_text() for t in axes.get_xticklabels()] == names
    assert [t.get_text() for t in axes.get_yticklabels()] == names
    (shades,) = axes.get_images()
    np.testing.assert_allclose(shades.get_array(), [[0.8, 0.2, 0], [0.5, 0.5, 0], [0, 0, 1]])
    counts = sorted(text.get_text() for text in axes.texts)
    assert counts == ["1", "1", "2", "5", "8"]  # the empty cells say nothing
    assert png_bytes(figure).startswith(b"\x89PNG")


def test_matplotlib_is_not_imported_until_a_picture_is_made():
    import subprocess
    import sys

    code = (
        "import sys, trainkit.plotting, trainkit.cli, trainkit.reporting; "
        "assert 'matplotlib' not in sys.modules"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
