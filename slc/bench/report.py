"""Where a bench's results go: a folder for its files, and its markdown, JSON and PNG outputs."""
from __future__ import annotations

import json
import os
import sys
from typing import Callable

from slc.atomic import atomic_output
from slc.errors import SlcInputError
from slc.resume import preflight


def check_outputs(plot: str | None, markdown: str | None, json_path: str | None, force: bool) -> None:
    """Before any work: every output writable (or ``force``), and matplotlib there for a plot."""
    for path in (plot, markdown, None if json_path == "-" else json_path):
        if path:
            preflight(path, force, False)
    if plot:
        from slc.bench.plots import require_matplotlib

        require_matplotlib("`plot`")


def keep_folder(path: str, force: bool) -> None:
    """A new or empty folder for the files a bench keeps (a full one only with ``force``)."""
    if os.path.isdir(path) and os.listdir(path) and not force:
        raise SlcInputError(f"expected a new or empty folder for `keep`, got {path} with files in it (pass "
                            "`force=True`)")
    os.makedirs(path, exist_ok=True)


def write_results(result: dict, plot: Callable[[], None] | None, md_path: str | None, md_text: str | None,
                  json_path: str | None, force: bool) -> None:
    """The markdown, JSON (``-``: stdout) and PNG outputs, the plot last: the tables are written even if drawing fails."""
    if md_path:
        with atomic_output(md_path, force) as f:
            f.write(md_text.encode())
    if json_path:
        text = json.dumps(result, indent=2, default=str)
        if json_path == "-":
            sys.stdout.write(text + "\n")
            sys.stdout.flush()
        else:
            with atomic_output(json_path, force) as f:
                f.write(text.encode())
    if plot:
        plot()
