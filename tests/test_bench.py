"""`slc bench`: real CLI runs on small synthetic labels (quality claims live in the README's real-label table)."""
import json

import numpy as np
import pytest

from slc.bench.codecs import BenchConfig, parse_spec, run_bench
from slc.sample import fit_sample
from slc.errors import SlcInputError
from slc.sources import ArraySource
from tests.conftest import run_slc, synthetic_logits
from tests.test_encode import SMALL, Tiny, folder, script  # noqa: F401  (folder is a fixture)


def test_bench_cli_rows_errors_plot_and_json(tmp_path):
    np.save(tmp_path / "z.npy", synthetic_logits(epochs=4, samples=600, classes=30))
    p = run_slc("bench", tmp_path / "z.npy", "--codecs", "auto,topk,topk-mrs,prune,prune2+topk,fp16,nope",
                "--ratios", "4,1000", "-T", "1", "-T", "3", "--fit-steps", "30", "--plot", tmp_path / "rd.png",
                "--json", tmp_path / "r.json", "--markdown", tmp_path / "r.md", "--keep", tmp_path / "files")
    assert p.returncode == 0, p.stderr.decode()
    out = p.stdout.decode()
    assert "KL@T=1" in out and "KL@T=3" in out and "refused" in out and "nope" in out
    r = json.loads((tmp_path / "r.json").read_text())
    rows = {(x["codec"], x["target"]): x for x in r["rows"]}
    assert set(rows) == {(c, t) for c in ("auto", "topk", "topk-mrs", "prune", "prune2+topk") for t in (4, 1000)} | {
        ("fp16", None)}
    for (codec, target), row in rows.items():
        if target == 1000:  # no codec reaches 1000x here: the row says how far each one gets
            assert "nearest reachable" in row["error"], row
            continue
        assert set(row["kl"]) == {"1.0", "3.0"} or set(map(float, row["kl"])) == {1.0, 3.0}
        if codec == "prune":  # LPLD alone keeps whole fp16 epochs: the ratio is E / kept, less the overheads
            assert row["ratio"] == pytest.approx(target, rel=0.03)
        else:
            assert row["ratio"] >= (target or 0.9) * 0.999
        assert (tmp_path / "files" / row["path"].split("/")[-1]).stat().st_size == row["bytes"]
        kept = {"prune": 1, "prune2+topk": 2}.get(codec, 4)  # pruned rows are scored on the epochs they keep
        assert row["scored"] == kept * 120  # the held-out 20% of each epoch
    assert rows[("fp16", None)]["kl"]["1.0"] < 1e-4 < rows[("topk", 4)]["kl"]["1.0"]
    assert rows[("prune", 4)]["pruned"] and not rows[("topk", 4)]["pruned"]
    assert (tmp_path / "rd.png").read_bytes()[:4] == b"\x89PNG"
    assert "| codec |" in (tmp_path / "r.md").read_text()
    assert r["verdicts"] and all("auto" in v for v in r["verdicts"])
    again = run_slc("bench", tmp_path / "z.npy", "--codecs", "topk", "--ratios", "4", "--plot", tmp_path / "rd.png")
    assert again.returncode == 1 and b"--force" in again.stderr and len(again.stderr.splitlines()) == 1


def test_codecs_are_fitted_without_the_held_out_positions():
    z = synthetic_logits(epochs=3, samples=500, classes=20)
    z[:, 400:] += 100.0 * np.arange(20)  # held-out rows are unmistakable
    for labels in (10**6, 700):  # the whole fit part, and a random sample of it
        lp = fit_sample(ArraySource(z), "logits", 1.0, labels, seed=0, fit_samples=400)
        assert len(lp) == min(labels, 3 * 400)
        assert (lp.argmax(1) != 19).mean() > 0.5  # held-out rows all peak at class 19


def test_bench_refuses_what_it_cannot_score():
    with pytest.raises(SlcInputError, match="held-out share"):
        run_bench(synthetic_logits(epochs=1, samples=50, classes=8), BenchConfig(codecs=("topk",), holdout=1.0))
    with pytest.raises(SlcInputError, match="pruneR"):
        parse_spec("prune4+bogus")
    assert parse_spec("prune+vqae").prune == 4 and parse_spec("prune").codec == "fp16"


def test_bench_students_floor_ceiling_and_pruned_rows(tmp_path, folder):  # noqa: F811
    import torch

    torch.manual_seed(0)
    teacher = script(Tiny(200), tmp_path / "t200.pt")
    labels = tmp_path / "l.slc"
    run_slc("encode", teacher, folder, "-o", labels, "--epochs", "4", *SMALL, "--codec", "fp16", "-T", "2", "-q",
            check=True)
    p = run_slc("bench", labels, "--codecs", "topk,prune2+topk", "--ratios", "2", "--student", folder, "--teacher",
                teacher, "--heldout", folder, "--arch", "convnet", "--epochs", "2", "--batch-size", "16",
                "--json", "-", "-q")
    assert p.returncode == 0, p.stderr.decode()
    r = json.loads(p.stdout[p.stdout.index(b"{"):])
    floor, ceiling = r["reference_rows"]
    assert floor["codec"].startswith("hard") and ceiling["codec"].startswith("input")
    assert floor["student"]["kept"] == 0 and ceiling["student"]["kept"] == 1
    for row in r["rows"]:
        assert "error" not in row, row
        s = row["student"]
        assert s["kl_to_teacher"] >= 0 and 0 <= s["teacher_agreement"] <= 1 and "kept" in s
    assert [row["pruned"] for row in r["rows"]] == [False, True]


def test_a_kl_within_one_percent_is_a_tie_and_a_win_that_loses_top1_is_named_as_such():
    from slc.bench.codecs import verdicts

    rows = [{"codec": "auto", "target": 10.0, "bytes": 1000, "ratio": 10.0, "kl": {4.0: 1.000e-3}, "pruned": False,
             "picked_by_t": {4.0: "hybrid"}, "top1_by_t": {4.0: 1.0}},
            {"codec": "topk", "target": 40.0, "bytes": 250, "ratio": 40.0, "kl": {4.0: 0.996e-3}, "pruned": False,
             "top1_by_t": {4.0: 1.0}}]
    assert verdicts(rows, [4.0]) == ["T=4 10x: auto (hybrid, top-1 100.0%) ties with the front (KL within 1%)"]
    rows[1]["kl"][4.0] = 0.5e-3
    assert "is beaten by topk at 40.0x (KL 0.0005, 2.00x lower, top-1 100.0%)" in verdicts(rows, [4.0])[0]
    rows[1]["top1_by_t"][4.0] = 0.673
    assert verdicts(rows, [4.0]) == ["T=4 10x: auto (hybrid, top-1 100.0%), KL 0.001: lower KL only from codecs "
                                     "that lose the top-1, best topk at 40.0x (KL 0.0005, top-1 67.3%)"]


def test_token_bench_reads_the_held_out_tokens_once_and_scores_each_file_as_the_per_block_decode(tmp_path,
                                                                                                 monkeypatch):
    """Held-out tokens normalised once (in memory, or a memmap past MEMORY_BYTES), each bf16 top-k' scored once;
    every number is exactly what each file's per-block dense decode (``SlcFile.decode``) gives."""
    import torch

    from slc.bench import tokens
    from slc.codecs.labels import to_logp
    from slc.codecs.sparse import expand, kl_rows
    from slc.reader import open_slc
    from tests.test_tokens import lm_logits

    z = lm_logits(700, 600)
    np.save(tmp_path / "l.npy", z)
    monkeypatch.setattr(tokens, "BLOCK", 64)  # 140 held-out tokens: 3 blocks
    calls = []
    bf16_topk = tokens.bf16_topk
    monkeypatch.setattr(tokens, "bf16_topk", lambda t, k: calls.append(k) or bf16_topk(t, k))
    rows = ("k=8,steps=30", "k=8,steps=30,tail=prior", "k=4,values=bf16,tail=uniform")
    runs = []
    for limit in (2 << 30, 0):  # in memory, then a memmap
        monkeypatch.setattr(tokens, "MEMORY_BYTES", limit)
        calls.clear()
        runs.append(tokens.run_token_bench(tmp_path / "l.npy", rows, workdir=str(tmp_path / f"w{limit}")))
        assert sorted(calls) == sorted(3 * [*{r["same_bytes_k"] for r in runs[-1]["rows"]}, tokens.RECALL_K])
    speeds = {"path", "compress_tps", "decode_tps"}
    assert [{k: v for k, v in r.items() if k not in speeds} for r in runs[0]["rows"]] == [
        {k: v for k, v in r.items() if k not in speeds} for r in runs[1]["rows"]]
    assert runs[0]["reference"] == runs[1]["reference"]
    start = runs[0]["holdout_start"]
    for r in runs[0]["rows"]:
        kl, recall, top1, base = [], [], [], []
        with open_slc(r["path"]) as f:
            for a in range(start, 700, 64):
                b = min(700, a + 64)
                teacher, stored = to_logp(z[a:b], "logits", f.temperature), f.sparse(a, b)
                q = f.decode(0, a, b, out="logits") / f.temperature
                kl.append(kl_rows(teacher, q))
                true = torch.topk(torch.from_numpy(teacher), 20, 1).indices.numpy()
                recall += [len(np.intersect1d(t, s)) / 20 for t, s in zip(true, stored.indices)]
                top1.append(q.argmax(1) == teacher.argmax(1))
                base.append(kl_rows(teacher, expand(bf16_topk(teacher, r["same_bytes_k"]), 600, "uniform")))
        assert (r["kl"], r["recall"], r["top1"], r["same_bytes_kl"]) == (
            float(np.concatenate(kl).mean()), float(np.mean(recall)), float(np.concatenate(top1).mean()),
            float(np.concatenate(base).mean())), r["row"]
