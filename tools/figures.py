"""Render the Writer's figure specs to PNG, headless."""

from __future__ import annotations

from pathlib import Path

from reprodesk.schemas import Figure


def render(figure: Figure, path: Path) -> Path:
    # Imported here, not at module level: pyplot costs a quarter second, every CLI
    # command imports the graph, and only publishing draws.
    import matplotlib

    matplotlib.use("Agg")  # no display, no GUI toolkit; must precede pyplot
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    try:
        for label, points in sorted(figure.series.items()):
            xs, ys = zip(*sorted(points), strict=True)
            ax.plot(xs, ys, marker="o", label=label)
        ax.set_title(figure.title)
        ax.set_xlabel(figure.xlabel)
        ax.set_ylabel(figure.ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, ncol=2)
        fig.tight_layout()
        fig.savefig(path)
    finally:
        plt.close(fig)
    return path
