"""The exceptions slc raises. The CLI turns each into a one-line error."""
from __future__ import annotations


class SlcError(Exception):
    """Base class for every error slc raises on purpose."""


class SlcFormatError(SlcError, ValueError):
    """A file is not a valid ``.slc`` file: wrong magic, bad checksum, lying header...

    Messages say what was expected and what was found.
    """


class SlcInputError(SlcError, ValueError):
    """Labels or parameters given to slc are unusable (bad shape, NaN, unreachable ratio...)."""


def expect(cond: bool, what: str, got: object) -> None:
    """Raise ``SlcFormatError("expected <what>, got <got>")`` unless ``cond``."""
    if not cond:
        raise SlcFormatError(f"expected {what}, got {got}")
