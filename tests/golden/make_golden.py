"""Regenerate a golden file. Run once from the repository root; commit the outputs.

    python tests/golden/make_golden.py v1.0    # only with a 0.1.x writer: it writes format 1.0
    python tests/golden/make_golden.py v1.1    # the replay sections of `slc encode`
    python tests/golden/make_golden.py v1.2    # the 1.2 codecs and a pruned file
    python tests/golden/make_golden.py v1.3    # token-level topk-vq files with tokens.seq / tokens.ids
    python tests/golden/make_golden.py v1.3-capped    # the capped tail, from the v1.3 input
    python tests/golden/make_golden.py v1.4    # the hybrid codec, both forms, from the v1.0 logits
    python tests/golden/make_golden.py v1.5    # chunks that span epochs (5 epochs of 7 labels, 2 a chunk)
    python tests/golden/make_golden.py v1.5-pca    # the hybrid with a PCA rest, from the v1.0 logits
    python tests/golden/make_golden.py v1.6    # two part files of the v1.5 hybrid and the file they join into

Writes ``v1.0-topk.input.npy`` (the logits), ``v1.0-topk.slc`` and ``v1.0-topk.expected.npy``
(the decoded probabilities, float32, shape (E, N, C)). Only rerun on a deliberate format change:
tests/test_malformed.py reads these bytes as the reference.
"""
from pathlib import Path

import numpy as np

import slc
from slc.sources import open_labels

HERE = Path(__file__).parent


def make_v1_0() -> None:
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


def make_v1_1() -> None:
    """12 real images, a tiny seeded teacher, cutmix groups of 4 and stored boxes: every replay section."""
    import torch

    from slc.format.replay import Recipe

    images = np.load(HERE.parent.parent / "slc" / "bench" / "data" / "fmnist_subset.npz")["images"][:12]
    np.save(HERE / "v1.1-images.npy", images)
    torch.manual_seed(0)
    teacher = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, stride=2), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                                  torch.nn.Flatten(), torch.nn.Linear(4, 10)).eval()
    recipe = Recipe(seed=7, size=16, mean=(0.5,) * 3, std=(0.5,) * 3, invert=True, mix="cutmix", mix_group=4,
                    boxes="stored")
    out = HERE / "v1.1-replay.slc"
    slc.encode(teacher, str(HERE / "v1.1-images.npy"), out, recipe=recipe, epochs=2, batch_size=4, codec="topk", k=3,
               temperature=2.0, chunk_size=8, force=True)
    with slc.open_slc(out) as f:
        f.verify()
        np.save(HERE / "v1.1-replay.expected.npy", np.stack([f.decode(e) for e in range(2)]))
    print(f"wrote {out} ({out.stat().st_size} bytes)")


V1_2 = {"topk-mr": {"k": 3}, "topk-mrs": {"k": 3}, "pca": {"options": {"components": 3}},
        "quant": {"options": {"bits": 2}}, "vq-noae": {"options": {"k": 8, "dc": 5}}}


def make_v1_2() -> None:
    """One small file per codec new in 1.2 (from the v1.0 logits), and a pruned copy of the v1.1 replay file."""
    expected = {}
    for codec, kw in V1_2.items():
        out = HERE / f"v1.2-{codec}.slc"
        slc.compress(str(HERE / "v1.0-topk.input.npy"), str(out), codec=codec, source="logits", temperature=2.0,
                     chunk_size=8, force=True, **kw)
        with slc.open_slc(out) as f:
            f.verify()
            expected[codec] = np.stack([f.decode(e) for e in range(f.header.epochs)])
    out = HERE / "v1.2-pruned.slc"
    slc.compress(str(HERE / "v1.1-replay.slc"), str(out), codec="fp16", prune=2, seed=1, force=True)
    with slc.open_slc(out) as f:
        f.verify()
        expected["pruned"] = f.decode(0)
    np.savez(HERE / "v1.2-expected.npz", **expected)
    print(f"wrote {len(expected)} v1.2 files")


V1_3 = {"topk-vq": {"k": 5, "m": 2, "codes": 16, "steps": 50},
        "topk-vq-bf16": {"k": 5, "values": "bf16", "tail": "mrs"}}


V1_4 = {"hybrid-full": {"codec": "hybrid", "options": {"top": 2, "m": 2, "codes": 16}},
        "hybrid-collapsed": {"codec": "hybrid-prior", "options": {"top": 3, "m": 2, "codes": 16}}}


def make_v1_4() -> None:
    """The hybrid codec's two forms (from the v1.0 logits, 10 classes: 4-bit indices), chunks of 8."""
    expected = {}
    for name, kw in V1_4.items():
        out = HERE / f"v1.4-{name}.slc"
        slc.compress(str(HERE / "v1.0-topk.input.npy"), str(out), source="logits", temperature=2.0, chunk_size=8,
                     force=True, fit_config={"steps": 50}, **kw)
        with slc.open_slc(out) as f:
            f.verify()
            expected[name] = np.stack([f.decode(e, out="logits") for e in range(f.header.epochs)])
    np.savez(HERE / "v1.4-expected.npz", **expected)
    print(f"wrote {len(expected)} v1.4 files")


def make_v1_5() -> None:
    """Chunks of 2 whole epochs (the last chunk one epoch), top-k under zstd, plus a hybrid file."""
    rng = np.random.default_rng(20261130)
    logits = (rng.normal(size=(5, 7, 10)) * 2.0).astype(np.float32)
    expected = {"input": logits}
    for name, kw in {"topk": {"codec": "topk", "k": 3, "zstd": True},
                     "hybrid": {"codec": "hybrid", "options": {"top": 1, "m": 2, "codes": 16},
                                "fit_config": {"steps": 50}}}.items():
        out = HERE / f"v1.5-epochs-per-chunk-{name}.slc"
        slc.compress(logits, str(out), source="logits", temperature=2.0, chunk_size=16, force=True, **kw)
        with slc.open_slc(out) as f:
            f.verify()
            assert f.header.epochs_per_chunk == 2 and len(f.index) == 3
            expected[name] = np.stack([f.decode(e, out="logits") for e in range(f.header.epochs)])
    np.savez(HERE / "v1.5-expected.npz", **expected)
    print("wrote 2 v1.5 files")


def make_v1_5_pca() -> None:
    """``hybrid`` with ``rest = "pca"`` (top 2, 3 components), chunks of 8, from the v1.0 logits."""
    out = HERE / "v1.5-hybrid-pca.slc"
    slc.compress(str(HERE / "v1.0-topk.input.npy"), str(out), codec="hybrid-pca", options={"top": 2, "components": 3},
                 source="logits", temperature=2.0, chunk_size=8, epochs_per_chunk=1, force=True)
    with slc.open_slc(out) as f:
        f.verify()
        expected = np.stack([f.decode(e, out="logits") for e in range(f.header.epochs)])
    np.save(HERE / "v1.5-hybrid-pca.expected.npy", expected)
    print(f"wrote {out}")


def make_v1_6() -> None:
    """The v1.5 hybrid file written as parts 0/2 and 1/2 (its VQAE encoder in ``state.*``), and written whole."""
    from slc.format.parts import PartSpec

    logits = np.load(HERE / "v1.5-expected.npz")["input"]
    kw = dict(codec="hybrid", options={"top": 1, "m": 2, "codes": 16}, fit_config={"steps": 50}, source="logits",
              temperature=2.0, chunk_size=16, force=True)
    slc.compress(logits, str(HERE / "v1.6-whole.slc"), **kw)
    for i in range(2):
        slc.compress(logits, str(HERE / f"v1.6-part-{i}.slc"), part=PartSpec.share_of(f"{i}/2"), **kw)
    print("wrote 3 v1.6 files")


def make_v1_3() -> None:
    """Token labels over 300 words (2-byte ranks), 40 tokens in 3 sequences, chunks of 16."""
    rng = np.random.default_rng(20261129)
    zipf = -np.log(np.arange(1, 301))
    logits = (zipf + rng.normal(size=(40, 300)) * 1.5).astype(np.float32)
    logits[3, 10:] = -np.inf  # a suppressed vocabulary: only 10 words possible
    np.save(HERE / "v1.3-tokens.input.npy", logits)
    write_v1_3(V1_3, "v1.3-expected.npz")


V1_3_CAPPED = {"topk-vq-capped": {"k": 5, "values": "bf16", "tail": "capped"}}


def make_v1_3_capped() -> None:
    """The ``capped`` tail (added to 1.3 before it shipped), from the same input; the other v1.3 files stay."""
    write_v1_3(V1_3_CAPPED, "v1.3-capped-expected.npz")


def write_v1_3(files: dict, expected_name: str) -> None:
    expected = {}
    for name, options in files.items():
        out = HERE / f"v1.3-{name}.slc"
        slc.compress(str(HERE / "v1.3-tokens.input.npy"), str(out), codec="topk-vq", source="logits",
                     temperature=1.0, chunk_size=16, options=options, sequences=np.array([0, 7, 30, 40]),
                     token_ids=np.arange(40) * 7 % 300, force=True)
        with slc.open_slc(out) as f:
            f.verify()
            s = f.sparse()
            expected[name] = f.decode(0)
            expected[name + ".indices"], expected[name + ".logp"], expected[name + ".tail"] = s.indices, s.logp, s.tail
    np.savez(HERE / expected_name, **expected)
    print(f"wrote {len(files)} v1.3 files")


if __name__ == "__main__":
    import sys

    makers = {"v1.0": make_v1_0, "v1.1": make_v1_1, "v1.2": make_v1_2, "v1.3": make_v1_3, "v1.3-capped": make_v1_3_capped,
              "v1.4": make_v1_4, "v1.5": make_v1_5,
              "v1.5-pca": make_v1_5_pca, "v1.6": make_v1_6}
    makers[sys.argv[1] if len(sys.argv) > 1 else "v1.3"]()
