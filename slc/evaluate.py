"""Compare a ``.slc`` file with the labels it was made from."""
from __future__ import annotations

from .errors import SlcInputError
from .labels import check_block, to_logp
from .metrics import Fidelity
from .reader import SlcFile
from .sources import open_labels


def fidelity_against(f: SlcFile, spec: str) -> dict:
    """KL(original || decoded) at the stored temperature, top-1 agreement, top-5 overlap."""
    src = open_labels(spec)
    try:
        if tuple(src.shape) != f.shape:
            raise SlcInputError(f"expected original labels of shape {f.shape}, got {tuple(src.shape)} in {spec}")
        meter = Fidelity()
        kind = getattr(src, "kind", f.header.source)  # an .slc reference decodes to logits
        for e, s, dec in f.iter_chunks():
            ref = src.read(e, s, s + len(dec))
            check_block(ref, kind, e * f.header.samples + s)
            meter.update(to_logp(ref, kind, f.temperature), dec)
        return meter.result()
    finally:
        src.close()
