"""`slc train-student` in real subprocesses: outputs, evaluation and the checks made before training."""
import json
import shutil

import numpy as np
import torch
from PIL import Image

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
    from slc.students import build_student

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
