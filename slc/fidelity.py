"""How faithful decoded labels are to the originals: KL at the stored temperature, top-1, top-5."""
from __future__ import annotations

import numpy as np

from slc.codecs.labels import as_tensor, check_block, kl_to_decoded, to_logp
from slc.errors import SlcInputError
from slc.reader import SlcFile
from slc.sources import open_labels


class Fidelity:
    """Accumulates ``KL(y || y~)``, top-1 agreement and top-5 overlap over blocks of labels."""

    def __init__(self) -> None:
        self.n = 0
        self.kl = 0.0
        self.top1 = 0.0
        self.top5 = 0.0

    def update(self, ref_logp: np.ndarray, decoded_probs: np.ndarray) -> None:
        ref, dec = as_tensor(ref_logp), as_tensor(decoded_probs)
        self.kl += float(kl_to_decoded(ref_logp, decoded_probs).sum())
        self.top1 += float((ref.argmax(1) == dec.argmax(1)).sum())
        k = min(5, ref.shape[1])
        a, b = ref.topk(k, 1).indices, dec.topk(k, 1).indices
        self.top5 += float((a[:, :, None] == b[:, None, :]).any(2).sum()) / k
        self.n += ref.shape[0]

    def result(self) -> dict:
        n = max(self.n, 1)
        return {"labels": self.n, "kl": self.kl / n, "top1_agreement": self.top1 / n, "top5_overlap": self.top5 / n}


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
