"""Real token-level teacher distributions: the pocketsphinx trigram LM (72,547 words) over the KJV Bible.

Each verse is a sequence; the text is lower-cased into the LM's words (words the LM does not know
are dropped, and counted). For every position the teacher's full next-word distribution
p(w | two previous words) over all 72,547 words is computed with ``lm.prob`` (the LM's own
backoff), as float32 log-probabilities. Cached under ``$SLC_CACHE`` (default ``~/.cache/slc``):

    kjv-trigram/vocab.txt       the LM's words, in id order
    kjv-trigram/logp.npy        [N, 72547] float32 log-probabilities (N = --tokens, default 20,480)
    kjv-trigram/targets.npy     [N] the word that followed (int32 ids)
    kjv-trigram/seq.npy         sequence (verse) start offsets into the N tokens, plus N
    kjv-trigram/text.npy        every verse's word ids (int32) and ``text_seq.npy`` their offsets:
                                the first N tokens are the labelled ones, the rest is held-out text

    pip install --no-deps pocketsphinx==5.1.1 ; apt-get install bible-kjv-text bible-kjv
    python benchmarks/lm_labels.py [--tokens 20480] [--workers 2]

One distribution takes about 0.05 s (72,547 ``lm.prob`` calls), so 20,480 tokens take about
10 minutes on 2 cores.
"""
from __future__ import annotations

import argparse
import math
import os
import re
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

LOG_BASE = math.log(1.0001)  # pocketsphinx returns log probabilities in base 1.0001
CACHE = Path(os.environ.get("SLC_CACHE", Path.home() / ".cache" / "slc")) / "kjv-trigram"


def lm_path() -> str:
    import pocketsphinx

    return os.path.join(os.path.dirname(pocketsphinx.__file__), "model", "en-us", "en-us.lm.bin")


def vocabulary() -> list[str]:
    """The LM's words in id order: the unigram section of an ARPA dump.

    pocketsphinx 5.1.1's ``write`` garbles the bigram section and crashes, after writing the
    unigrams intact, so it runs in a child process and only the unigrams are read.
    """
    with tempfile.TemporaryDirectory() as d:
        arpa = os.path.join(d, "lm.arpa")
        code = "import sys; from pocketsphinx import NGramModel; NGramModel.readfile(sys.argv[1]).write(sys.argv[2])"
        subprocess.run([sys.executable, "-c", code, lm_path(), arpa], capture_output=True)
        text = Path(arpa).read_text(errors="replace")
    count = int(re.search(r"ngram 1=(\d+)", text).group(1))
    lines = text.split("\\1-grams:")[1].split("\\2-grams:")[0].strip().splitlines()
    words = [line.split()[1] for line in lines]
    if len(words) != count:
        raise SystemExit(f"expected {count} unigrams, got {len(words)}")
    return words


def verses() -> list[list[str]]:
    out = subprocess.run(["bible", "-p", "/usr/lib", "gen1:1-rev22:21"], capture_output=True, text=True,
                         check=True).stdout
    found, cur = [], None
    for line in out.splitlines():
        m = re.match(r"^\s+\d+ (.*)$", line)
        if m:
            cur = [m.group(1)]
            found.append(cur)
        elif line.strip() and cur is not None and not re.match(r"^\S.* \d+$", line):
            cur.append(line)
        elif not line.strip():
            cur = None
    return [re.findall(r"[a-z]+(?:'[a-z]+)?", " ".join(v).lower()) for v in found]


_LM, _WORDS = None, []


def _init(words: list[str]) -> None:
    global _LM, _WORDS
    from pocketsphinx import NGramModel

    _LM, _WORDS = NGramModel.readfile(lm_path()), words


def distribution(history: tuple[str, ...]) -> np.ndarray:
    """log p(w | history) for every word w (history most recent first), natural log, float32."""
    lp = np.fromiter((_LM.prob([w, *history]) for w in _WORDS), np.float64, len(_WORDS)) * LOG_BASE
    return lp.astype(np.float32)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tokens", type=int, default=20480, help="labelled tokens (the rest of the text is held out)")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = ap.parse_args()
    from tqdm import tqdm

    CACHE.mkdir(parents=True, exist_ok=True)
    words = vocabulary()
    ids = {w: i for i, w in enumerate(words)}
    text, starts, dropped, total = [], [0], 0, 0
    for v in verses():
        total += len(v)
        kept = [ids[w] for w in v if w in ids]
        dropped += len(v) - len(kept)
        text.extend(kept + [ids["</s>"]])  # each verse ends with </s>
        starts.append(len(text))
    text_a, starts_a = np.asarray(text, np.int32), np.asarray(starts, np.int64)
    print(f"{len(starts) - 1:,} verses, {total:,} words, {dropped:,} not in the LM's vocabulary "
          f"({100 * dropped / total:.2f}%) dropped; {len(text):,} tokens with </s>")
    n = args.tokens
    seq = starts_a[starts_a < n].tolist() + [n]
    jobs = []  # the two previous words, most recent first; a verse starts after <s>
    for s, e in zip(starts_a[:-1], starts_a[1:]):
        for t in range(s, min(e, n)):
            hist = ["<s>", *(words[i] for i in text_a[s:t])][-2:]
            jobs.append(tuple(reversed(hist)))
        if e >= n:
            break
    out = np.lib.format.open_memmap(CACHE / "logp.npy.partial", mode="w+", dtype=np.float32, shape=(n, len(words)))
    t0 = time.perf_counter()
    with ProcessPoolExecutor(args.workers, initializer=_init, initargs=(words,)) as pool:
        for i, lp in enumerate(tqdm(pool.map(distribution, jobs, chunksize=16), total=n, unit="token",
                                    desc="teacher")):
            out[i] = lp
    out.flush()
    del out
    os.replace(CACHE / "logp.npy.partial", CACHE / "logp.npy")
    np.save(CACHE / "targets.npy", text_a[:n])
    np.save(CACHE / "seq.npy", np.asarray(seq, np.int64))
    np.save(CACHE / "text.npy", text_a)
    np.save(CACHE / "text_seq.npy", starts_a)
    (CACHE / "vocab.txt").write_text("\n".join(words) + "\n")
    print(f"{n:,} distributions in {time.perf_counter() - t0:.0f} s -> {CACHE}")


if __name__ == "__main__":
    main()
