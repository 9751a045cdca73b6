#!/usr/bin/env python
"""Real 5,000-class next-word distributions: the pocketsphinx trigram LM over the KJV Bible, on a fixed word slice.

The teacher and text are ``lm_labels.py``'s (pocketsphinx 5.1.1's en-us trigram LM, 72,547 words; every
KJV verse lower-cased into the LM's words, unknown words dropped, ``</s>`` after each verse; the history
is the two previous words of the verse, ``<s>`` at its start, most recent first). The classes are a
fixed slice of the vocabulary: **the LM's 5,000 most probable words by unigram probability**
(``lm.prob([w])``; ties by word id), kept in the LM's id order. For every position the teacher's
``log p(w | history)`` is computed for those 5,000 words only (about 14x cheaper than all 72,547) and
stored as float32 "logits": a softmax over them renormalises the distribution over the slice.

Sets (``SETS``):
  kjv-trigram-5000          the first 20,480 token positions of the text (16,384 to fit + 4,096 to
                            choose, as ``slc compress`` samples), frame (1, 20480, 5000)
  kjv-trigram-5000-heldout  2,000 positions from the verses that follow (the first verse that starts
                            after the training part onwards; no verse is in both), (1, 2000, 5000)

Cached as ``real_labels.py`` does, under ``${SLC_CACHE:-~/.cache/slc}/real_labels/<name>/``:
  logits.npy     float32 [1, N, 5000]  log p(w | history) over the slice (natural log, not renormalised)
  targets.npy    int32   [N]  the LM id of the word that followed
  positions.npy  int64   [N]  each label's token offset in the text
  slice.npy      int32   [5000]  the slice's LM word ids (ascending); ``words.txt`` the words
  meta.json      parameters, the slice's sha256, mass on the slice and target coverage, seconds

    pip install --no-deps pocketsphinx==5.1.1 ; apt-get install bible-kjv-text bible-kjv
    python benchmarks/kjv_slice_labels.py [--name kjv-trigram-5000-heldout] [--workers 1]
"""
from __future__ import annotations

import argparse
import hashlib
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
import lm_labels as lm  # noqa: E402
from real_labels import read_cache, write_cache  # noqa: E402

WORDS = 5000
TRAIN_TOKENS, HELDOUT_TOKENS = 16_384 + 4_096, 2_000
SETS = {
    "kjv-trigram-5000": dict(words=WORDS, tokens=TRAIN_TOKENS, part="train"),
    "kjv-trigram-5000-heldout": dict(words=WORDS, tokens=HELDOUT_TOKENS, part="heldout", after=TRAIN_TOKENS),
}
FILES = ("logits", "targets", "positions", "slice")


def cache_root() -> Path:
    return Path(os.environ.get("SLC_CACHE", "~/.cache/slc")).expanduser() / "real_labels"


def word_slice(words: list[str], size: int = WORDS) -> np.ndarray:
    """LM ids of the ``size`` words of highest unigram probability (ties by id), ascending."""
    from pocketsphinx import NGramModel

    model = NGramModel.readfile(lm.lm_path())
    uni = np.array([model.prob([w]) for w in words], np.int64)
    top = np.lexsort((np.arange(len(words)), -uni))[:size]
    return np.sort(top).astype(np.int32)


def text() -> tuple[list[str], np.ndarray, np.ndarray]:
    """(LM words, every verse's word ids with a closing ``</s>``, verse start offsets + end), as lm_labels.py."""
    words = lm.vocabulary()
    ids = {w: i for i, w in enumerate(words)}
    toks, starts = [], [0]
    for v in lm.verses():
        toks.extend([ids[w] for w in v if w in ids] + [ids["</s>"]])
        starts.append(len(toks))
    return words, np.asarray(toks, np.int32), np.asarray(starts, np.int64)


def histories(words, toks, starts, first: int, count: int) -> tuple[list[tuple[str, ...]], np.ndarray]:
    """The two-word histories (most recent first) of ``count`` positions from token ``first`` on, and those offsets."""
    jobs, pos = [], []
    for s, e in zip(starts[:-1], starts[1:]):
        if e <= first:
            continue
        for t in range(max(s, first), e):
            hist = ["<s>", *(words[i] for i in toks[s:t])][-2:]
            jobs.append(tuple(reversed(hist)))
            pos.append(t)
            if len(jobs) == count:
                return jobs, np.asarray(pos, np.int64)
    raise ValueError(f"the text has fewer than {count} positions from token {first}")


def load_slice_labels(name: str = "kjv-trigram-5000", workers: int = 1, force: bool = False, log=print) -> dict:
    p = SETS[name]
    d = cache_root() / name
    cached = None if force else read_cache(d, p, FILES)
    if cached is not None:
        return cached
    words, toks, starts = text()
    sl = word_slice(words, p["words"])
    if p["part"] == "train":
        first = 0
    else:  # the first verse that starts at or after the training part's end
        first = int(starts[np.searchsorted(starts, p["after"])])
    jobs, pos = histories(words, toks, starts, first, p["tokens"])
    sub = [words[i] for i in sl]
    log(f"{name}: {len(jobs):,} positions from token {first:,}, {len(sub):,} words each")
    t0 = time.perf_counter()
    logits = np.empty((1, len(jobs), len(sub)), np.float32)
    from tqdm import tqdm

    if workers > 1:
        with ProcessPoolExecutor(workers, initializer=lm._init, initargs=(sub,)) as pool:
            for i, lp in enumerate(tqdm(pool.map(lm.distribution, jobs, chunksize=16), total=len(jobs), unit="token")):
                logits[0, i] = lp
    else:
        lm._init(sub)
        for i, h in enumerate(tqdm(jobs, unit="token")):
            logits[0, i] = lm.distribution(h)
    seconds = time.perf_counter() - t0
    mass = np.exp(np.logaddexp.reduce(logits[0].astype(np.float64), axis=-1))
    targets = toks[pos]
    meta = dict(name=name, teacher="pocketsphinx 5.1.1 en-us.lm.bin (trigram, 72,547 words)",
                text="KJV (bible-kjv), lm_labels.py's tokenisation", first_token=first,
                slice="the LM's top words by unigram probability lm.prob([w]), ties by id, in id order",
                slice_sha256=hashlib.sha256("\n".join(sub).encode()).hexdigest(),
                mass_on_slice_mean=float(mass.mean()), mass_on_slice_min=float(mass.min()),
                targets_in_slice=float(np.isin(targets, sl).mean()),
                seconds=round(seconds, 1), ms_per_position=round(1000 * seconds / len(jobs), 3), **p)
    out = dict(logits=logits, targets=targets.astype(np.int32), positions=pos, slice=sl)
    d.mkdir(parents=True, exist_ok=True)
    (d / "words.txt").write_text("\n".join(sub) + "\n")
    return write_cache(d, out, meta, FILES)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--name", default="kjv-trigram-5000", choices=sorted(SETS))
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--force", action="store_true", help="regenerate even if cached")
    a = ap.parse_args(argv)
    r = load_slice_labels(a.name, a.workers, a.force)
    print(f"set {a.name}: logits {r['logits'].shape}; " + ", ".join(
        f"{k} {r['meta'][k]}" for k in ("mass_on_slice_mean", "mass_on_slice_min", "targets_in_slice", "seconds")))


if __name__ == "__main__":
    main()
