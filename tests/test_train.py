"""`slc train-student` in real subprocesses: outputs, evaluation, the checks made before training, resume."""
import json
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image

from slc.errors import SlcInputError
from slc.vision.train import TrainConfig, train_student
from tests.conftest import run_slc
from tests.test_cli import one_line_error
from tests.test_encode import SMALL, Tiny, folder, script  # noqa: F401  (folder is a fixture)


def test_train_student_end_to_end_and_bad_input(tmp_path, folder):  # noqa: F811
    torch.manual_seed(0)
    teacher = script(Tiny(2), tmp_path / "t2.pt")  # 2 outputs: the folder's classes, coat and shirt
    labels = tmp_path / "l.slc"
    run_slc("encode", teacher, folder, "-o", labels, "--epochs", "2", *SMALL, "--codec", "fp16", "-T", "2", "-q",
            check=True)
    out = tmp_path / "run"
    p = run_slc("train-student", folder, labels, "-o", out, "--epochs", "3", "--batch-size", "16", "--val", folder,
                "--teacher", teacher, "--heldout", folder, "--json", "-q", check=True)
    r = json.loads(p.stdout)
    assert r["epochs"] == 3 and r["temperature"] == 2.0
    assert 0 <= r["val"]["top1"] <= 1 and r["val"]["images"] == 40
    assert 0 <= r["heldout"]["teacher_agreement"] <= 1 and r["heldout"]["kl_to_teacher"] >= 0
    rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in rows] == [0, 1, 2]
    ts = torch.jit.load(str(out / "student.ts"))
    from slc.vision.students import build_student

    m = build_student("convnet", 2, 3)
    m.load_state_dict(torch.load(out / "student.pt", weights_only=True))
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(ts(x), m.eval()(x))
    # the hard-label floor trains too
    p = run_slc("train-student", folder, labels, "-o", tmp_path / "hard", "--epochs", "1", "--hard", "--val", folder,
                "--json", "-q", check=True)
    assert json.loads(p.stdout)["config"]["hard"] is True
    # existing outputs need --force
    one_line_error(run_slc("train-student", folder, labels, "-o", out, "-q"), "use --force")
    # different images: caught before training, naming the image
    other = tmp_path / "other"
    shutil.copytree(folder, other)
    Image.fromarray(np.zeros((30, 30, 3), np.uint8)).save(other / "coat" / "001.png")
    one_line_error(run_slc("train-student", other, labels, "-o", tmp_path / "r2", "-q"), "coat/001.png")
    # a student whose width is not the label width
    bad = script(Tiny(3), tmp_path / "s3.pt")
    one_line_error(run_slc("train-student", folder, labels, "-o", tmp_path / "r3", "--student", bad, "-q"),
                   "expected a student with 2 outputs")
    # validation classes the labels do not cover
    val = tmp_path / "val"
    shutil.copytree(folder, val)
    shutil.copytree(val / "coat", val / "dress")
    one_line_error(run_slc("train-student", folder, labels, "-o", tmp_path / "r4", "--val", val, "-q"),
                   "['dress'] not among")


@pytest.fixture(scope="module")
def labels(tmp_path_factory, folder):  # noqa: F811
    """2 stored epochs of a 2-class teacher over the 40 images of ``folder``."""
    d = tmp_path_factory.mktemp("labels")
    teacher = script(Tiny(2), d / "t2.pt")
    out = d / "l.slc"
    run_slc("encode", teacher, folder, "-o", out, "--epochs", "2", *SMALL, "--codec", "fp16", "-T", "2", "-q",
            check=True)
    return out


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A TorchScript student small enough that an epoch of 40 crops takes milliseconds on a busy CPU."""
    return str(script(Tiny(2), tmp_path_factory.mktemp("student") / "s2.pt"))


def stop_after(images):
    """A ``progress`` callback that presses Ctrl-C once more than ``images`` crops were trained on."""
    seen = 0

    def progress(n, loss, total):
        nonlocal seen
        seen += n
        if seen > images:
            raise KeyboardInterrupt

    return progress


def test_resume_after_interrupt_is_bit_identical(tmp_path, folder, labels, tiny):  # noqa: F811
    cfg = TrainConfig(student=tiny, epochs=3, batch_size=16, checkpoint_every=0)  # every epoch
    whole = tmp_path / "whole"
    train_student(labels, folder, whole, cfg)
    assert not (whole / "checkpoint.pt").exists()  # deleted once the outputs are in place
    out = tmp_path / "cut"
    with pytest.raises(KeyboardInterrupt) as e:  # during epoch 2 of 3 (40 crops an epoch)
        train_student(labels, folder, out, cfg, progress=stop_after(40))
    assert "1 of 3 epochs" in e.value.slc_hint and "`resume=True`" in e.value.slc_hint
    ck = torch.load(out / "checkpoint.pt", weights_only=True)
    assert ck["epoch"] == 0 and [r["epoch"] for r in json.loads(ck["rows"])] == [0]
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.pt"]
    # without --resume the interrupted run is in the way
    with pytest.raises(SlcInputError, match="pass `resume=True` to continue it or `force=True`"):
        train_student(labels, folder, out, cfg)
    # the real CLI continues it; --workers and --device may change
    p = run_slc("train-student", folder, labels, "-o", out, "--student", tiny, "--epochs", "3", "--batch-size", "16",
                "--workers", "1", "--device", "cpu", "--checkpoint-every", "5", "--resume", "--json", check=True)
    assert "resume: continuing after epoch 1 of 3" in p.stderr.decode()
    assert json.loads(p.stdout)["epochs"] == 3
    assert [json.loads(line)["epoch"] for line in (out / "log.jsonl").read_text().splitlines()] == [0, 1, 2]
    assert not (out / "checkpoint.pt").exists()
    a = torch.load(whole / "student.pt", weights_only=True)
    b = torch.load(out / "student.pt", weights_only=True)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # nothing to resume: a finished run's outputs still need --force; with it, a fresh run
    with pytest.raises(SlcInputError, match="use `force=True`"):
        train_student(labels, folder, out, cfg, resume=True)
    logged = []
    train_student(labels, folder, out, cfg, resume=True, force=True, log=logged.append)
    assert "nothing to resume" in logged[0]
    c = torch.load(out / "student.pt", weights_only=True)
    assert all(torch.equal(a[k], c[k]) for k in a)


def test_sigterm_keeps_a_checkpoint_and_resume_checks_the_run(tmp_path, folder, labels, tiny):  # noqa: F811
    out = tmp_path / "run"
    args = ["train-student", folder, labels, "-o", out, "--student", tiny, "--epochs", "1000", "--batch-size", "16",
            "--checkpoint-every", "0"]
    p = subprocess.Popen([sys.executable, "-m", "slc", *map(str, args), "-q"], stderr=subprocess.PIPE)
    t0 = time.monotonic()
    # waits for the first checkpoint; the limit only matters on a heavily loaded machine
    while p.poll() is None and not (out / "checkpoint.pt").exists() and time.monotonic() - t0 < 600:
        time.sleep(0.02)
    p.send_signal(signal.SIGTERM)
    err = p.communicate()[1].decode()
    assert p.returncode == 130 and "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "rerun the same command with --resume to continue" in lines[0], err
    assert (out / "checkpoint.pt").exists() and not (out / "student.pt").exists()
    with pytest.raises(SlcInputError, match=r"expected the same lr as the interrupted run \(0.001 then, 0.002 now\)"):
        train_student(labels, folder, out, TrainConfig(tiny, epochs=1000, batch_size=16, lr=0.002), resume=True)
    with pytest.raises(SlcInputError, match=r"epochs as the interrupted run \(1000 then, 999 now\)"):
        train_student(labels, folder, out, TrainConfig(tiny, epochs=999, batch_size=16), resume=True)
    assert (out / "checkpoint.pt").exists()  # a refused resume leaves the interrupted run as it was
