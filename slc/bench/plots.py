"""PNG plots through matplotlib, an optional dependency: checked before the work, saved atomically."""
from __future__ import annotations

from slc.errors import SlcInputError


def require_matplotlib(what: str) -> None:
    """Fail now, in one line naming the extra, if matplotlib is missing (not after an hour of work)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise SlcInputError(f"expected matplotlib for {what}, got none installed; run: pip install matplotlib "
                            "(slc's [plot] extra)") from None


def pyplot():
    """``matplotlib.pyplot`` on the file-only Agg backend (no display needed)."""
    require_matplotlib("the plot")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_png(fig, path: str, force: bool, dpi: int = 110) -> None:
    """Write ``fig`` to ``path`` through a temp file (never a half-written PNG) and release it."""
    from slc.atomic import atomic_output

    with atomic_output(path, force) as f:
        fig.savefig(f, format="png", dpi=dpi)
    pyplot().close(fig)
