"""The one figure writer: matplotlib figures made without pyplot (the user's backend is never switched),
saved atomically as PNG."""

from __future__ import annotations

from nnunetv2_tumorsynth.files import atomic_path


def new_figure(rows: int = 1, columns: int = 1, **figure_kwargs):
    """(figure, axes) with ``axes`` a 2-D array of ``rows x columns`` panels; kwargs go to ``Figure``."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    subplot_kwargs = {key: figure_kwargs.pop(key) for key in ("gridspec_kw", "sharex", "sharey")
                      if key in figure_kwargs}
    fig = Figure(**figure_kwargs)
    FigureCanvasAgg(fig)
    return fig, fig.subplots(rows, columns, squeeze=False, **subplot_kwargs)


def save_figure(fig, path: str, dpi: int = 100) -> None:
    """Write ``fig`` to ``path`` atomically (PNG unless the ending says otherwise)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    if fig.canvas is None or not isinstance(fig.canvas, FigureCanvasAgg):
        FigureCanvasAgg(fig)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi)
