"""Regenerate the golden v1.0 top-k file. Run once from the repository root; commit the outputs.

    python tests/golden/make_golden.py

Writes ``v1.0-topk.input.npy`` (the logits), ``v1.0-topk.slc`` and ``v1.0-topk.expected.npy``
(the decoded probabilities, float32, shape (E, N, C)). Only rerun on a deliberate format change:
tests/test_malformed.py reads these bytes as the reference.
"""
from pathlib import Path

import numpy as np

import slc
from slc.sources import open_labels

HERE = Path(__file__).parent


def main() -> None:
    rng = np.random.default_rng(20261128)
    logits = (rng.normal(size=(2, 21, 10)) * 2.0).astype(np.float32)  # 21 = 8 + 8 + 5: a short last chunk
    np.save(HERE / "v1.0-topk.input.npy", logits)
    out = HERE / "v1.0-topk.slc"
    src = open_labels(str(HERE / "v1.0-topk.input.npy"))
    try:
        slc.compress(src, str(out), codec="topk", k=3, source="logits", temperature=2.0, chunk_size=8, force=True)
    finally:
        src.close()
    with slc.open_slc(out) as f:
        f.verify()
        expected = np.stack([f.decode(e) for e in range(f.header.epochs)]).astype(np.float32)
    np.save(HERE / "v1.0-topk.expected.npy", expected)
    print(f"wrote {out} ({out.stat().st_size} bytes) and expected {expected.shape}")


if __name__ == "__main__":
    main()
