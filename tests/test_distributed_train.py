"""`slc train-student` under torchrun: 2 ranks train the weights 1 process trains; a rank's failure stops all."""
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from slc.vision.dataset import BatchPoolSampler, DistributedEpochSampler, SoftLabelDataset
from slc.vision.train import TrainConfig, train_student
from tests.conftest import run_slc
from tests.test_encode import SMALL, Tiny, folder, script  # noqa: F401  (folder is a fixture)
from tests.test_train import stop_after

# 2 ranks against 1 process, same global batches: measured max |difference| 3e-8 here, at most 1.2e-7 with
# other teachers (fp32 summation order); 1e-5 is far below what a wrong batch split or BN statistic gives
ATOL = 1e-5

STUDENTS = '''
from torch import nn


def bn(classes=2):
    """Batch norm after bias-free convs (a bias before a norm has gradient 0 plus rounding, which Adam amplifies)."""
    return nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 8, 3, 2, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, classes))


def plain(classes=2):
    return nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(8, classes))
'''


@pytest.fixture(scope="module")
def students(tmp_path_factory):
    """A folder with ``ddp_students.py`` (factories ``bn`` and ``plain``), importable here and in torchrun's ranks."""
    d = tmp_path_factory.mktemp("students")
    (d / "ddp_students.py").write_text(STUDENTS)
    sys.path.insert(0, str(d))
    yield d
    sys.path.remove(str(d))
    sys.modules.pop("ddp_students", None)


@pytest.fixture(scope="module")
def labels(tmp_path_factory, folder):  # noqa: F811
    """2 stored epochs over the 40 images of ``folder``, in chunks of 8 labels (so one rank alone reads some)."""
    d = tmp_path_factory.mktemp("labels")
    torch.manual_seed(0)
    teacher = script(Tiny(2), d / "t2.pt")
    out = d / "l.slc"
    run_slc("encode", teacher, folder, "-o", out, "--epochs", "2", *SMALL, "--codec", "fp16", "-T", "2",
            "--chunk-size", "8", "-q", check=True)
    return out


def torchrun(students, *args) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc-per-node 2 -m slc ARGS``, as a user would run it."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(students), os.environ.get("PYTHONPATH", "")]),
           "SLC_DIST_TIMEOUT_S": "120"}  # a hang fails the test instead of waiting a day
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           "-m", "slc", *map(str, args)], capture_output=True, env=env, timeout=600)


def errors(p: subprocess.CompletedProcess) -> list[str]:
    return [line for line in p.stderr.decode().splitlines() if line.startswith("Error: ")]


def assert_same_weights(a_dir, b_dir):
    a = torch.load(a_dir / "student.pt", weights_only=True)
    b = torch.load(b_dir / "student.pt", weights_only=True)
    assert a.keys() == b.keys()
    for k in a:  # running statistics and num_batches_tracked included
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=ATOL, msg=k)
    rows = [[json.loads(line)["loss"] for line in (d / "log.jsonl").read_text().splitlines()] for d in (a_dir, b_dir)]
    assert rows[0] == pytest.approx(rows[1], rel=1e-5, abs=1e-6)  # a KL near 0 is a difference of O(1) terms


def test_two_ranks_train_the_weights_of_one_process(tmp_path, folder, labels, students):  # noqa: F811
    # batch norm over the whole batch; batches of 15 split 7 + 8, the last of 10 5 + 5; LPLD's random batches
    cfg = TrainConfig(student="ddp_students:bn", epochs=3, batch_size=15, sampling="lpld")
    one = tmp_path / "one"
    train_student(labels, folder, one, cfg)
    two = tmp_path / "two"
    p = torchrun(students, "train-student", folder, labels, "-o", two, "--student", cfg.student, "--epochs", "3",
                 "--batch-size", "15", "--sampling", "lpld", "--json")
    assert p.returncode == 0, p.stderr.decode()
    assert json.loads(p.stdout)["epochs"] == 3  # rank 0 alone prints (one JSON document)
    assert sorted(f.name for f in two.iterdir()) == ["log.jsonl", "result.json", "student.pt", "student.ts"]
    assert_same_weights(one, two)
    m = torch.jit.load(str(two / "student.ts"))  # exported with plain batch norm again
    assert "BatchNorm2d" in {s.original_name for s in m.modules()}
    # rank 0 checks the outputs; both ranks stop, one line each
    p = torchrun(students, "train-student", folder, labels, "-o", two, "--student", cfg.student, "-q")
    lines = errors(p)
    assert p.returncode != 0 and len(lines) == 2, p.stderr.decode()
    assert all("use --force" in line for line in lines) and any("rank 0 failed" in line for line in lines)


def test_resume_under_torchrun_with_an_empty_share(tmp_path, folder, labels, students):  # noqa: F811
    # batches of 13: the last of each epoch has 1 image, so rank 0's share of it is empty
    cfg = TrainConfig(student="ddp_students:plain", epochs=3, batch_size=13, hard=True, checkpoint_every=0)
    whole = tmp_path / "whole"
    train_student(labels, folder, whole, cfg)
    cut = tmp_path / "cut"
    with pytest.raises(KeyboardInterrupt):  # one process stops during epoch 2 of 3; two ranks finish the run
        train_student(labels, folder, cut, cfg, progress=stop_after(40))
    p = torchrun(students, "train-student", folder, labels, "-o", cut, "--student", cfg.student, "--epochs", "3",
                 "--batch-size", "13", "--hard", "--checkpoint-every", "0", "--resume")
    err = p.stderr.decode()
    assert p.returncode == 0, err
    assert err.count("resume: continuing after epoch 1 of 3") == 1 and err.count("epoch 3/3: loss") == 1, err
    assert not (cut / "checkpoint.pt").exists()
    assert_same_weights(whole, cut)


def test_a_rank_that_cannot_read_its_share_stops_every_rank(tmp_path, folder, labels, students):  # noqa: F811
    from slc import open_slc

    bad = tmp_path / "bad.slc"
    shutil.copy(labels, bad)
    with open_slc(bad) as f:  # positions 8..15 of epoch 0: rank 1's share of the first batch of 16
        c = next(c for c in f.index if c.epoch == 0 and c.start == 8)
        at = f._chunks_offset + c.offset
    with open(bad, "r+b") as g:
        g.seek(at)
        byte = g.read(1)[0]
        g.seek(at)
        g.write(bytes([byte ^ 0xFF]))
    out = tmp_path / "run"
    p = torchrun(students, "train-student", folder, bad, "-o", out, "--student", "ddp_students:bn", "--epochs", "1",
                 "--batch-size", "16", "-q")
    lines = errors(p)
    assert p.returncode != 0 and len(lines) == 2, p.stderr.decode()
    assert all("for chunk at epoch 0 sample 8" in line for line in lines)
    assert any(line.startswith("Error: rank 1 failed reading its share of a batch in epoch 1:") for line in lines)
    assert not out.exists()  # nothing was written, so no folder is left behind


def test_distributed_epoch_sampler_shares_out_the_single_process_batches(folder, labels):  # noqa: F811
    ds = SoftLabelDataset(labels, folder)
    one = list(DistributedEpochSampler(ds, 16, rank=0, world=1, epoch=3))  # stored epoch 1, in order
    assert one == [list(range(40 + a, 40 + min(40, a + 16))) for a in (0, 16, 32)]
    for world in (2, 3):
        shares = [list(DistributedEpochSampler(ds, 16, rank=r, world=world, epoch=3)) for r in range(world)]
        for b, batch in enumerate(one):
            assert sum((s[b] for s in shares), []) == batch  # contiguous slices, in rank order
            assert max(len(s[b]) for s in shares) - min(len(s[b]) for s in shares) <= 1
    tiny = [list(DistributedEpochSampler(ds, 13, rank=r, world=2)) for r in range(2)]
    assert tiny[0][-1] == [] and tiny[1][-1] == [39]  # 40 = 3 x 13 + 1: the last batch leaves rank 0 nothing
    pool = BatchPoolSampler(ds, 16, seed=5)
    s = DistributedEpochSampler(ds, rank=1, world=2, batches=pool)
    s.set_epoch(2)  # reaches the pool
    assert pool.epoch == 2 and len(s) == len(pool) == 3
    assert list(s) == [b[len(b) // 2:] for b in pool]
    with pytest.raises(ValueError, match="expected one of batch_size and batches"):
        DistributedEpochSampler(ds, 16, batches=pool)
    with pytest.raises(ValueError, match="expected 0 <= rank < world, got rank 2 of 2"):
        DistributedEpochSampler(ds, 16, rank=2, world=2)


def test_global_batch_norm_is_batch_norm_and_swaps_back():
    """The synced layer's own math (one rank: its all-gather and all-reduce see only this batch) against torch's."""
    import torch.distributed as dist
    from torch import nn

    from slc.vision.syncbn import GlobalBatchNorm, _GlobalStats, synced, unsynced

    torch.manual_seed(0)
    x = (torch.randn(6, 3, 4, 5, dtype=torch.float64) * 3 + 1).requires_grad_()
    w = torch.randn(3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, dtype=torch.float64, requires_grad=True)
    r = torch.randn(6, 3, 4, 5, dtype=torch.float64)
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        for momentum in (0.1, 0.5):
            rm, rv = torch.zeros(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64)
            y = _GlobalStats.apply(x, w, b, rm, rv, 1e-5, momentum, None)
            got = torch.autograd.grad((y * r).sum(), (x, w, b))
            rm0, rv0 = torch.zeros(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64)
            y0 = torch.nn.functional.batch_norm(x, rm0, rv0, w, b, True, momentum, 1e-5)
            want = torch.autograd.grad((y0 * r).sum(), (x, w, b))
            torch.testing.assert_close(y, y0)
            for g, g0 in zip(got, want):
                torch.testing.assert_close(g, g0)
            torch.testing.assert_close((rm, rv), (rm0, rv0))
    finally:
        dist.destroy_process_group()
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, momentum=None), nn.Flatten(), nn.BatchNorm1d(4 * 36))
    keys, weight = list(net.state_dict()), net[1].weight
    assert synced(net) == 2 and isinstance(net[1], GlobalBatchNorm) and net[1].weight is weight
    assert list(net.state_dict()) == keys and net[1].momentum is None
    unsynced(net)
    assert [type(m) for m in net] == [nn.Conv2d, nn.BatchNorm2d, nn.Flatten, nn.BatchNorm1d] and net[1].weight is weight
