"""What a new user hit in the first hour (issue 15), each through the real CLI in a subprocess.

Every "Broken" case here failed before its fix: a silent temperature change, a student lost to a
wrong-width teacher, `--skip-bad` not carrying over, a planner that refused what it could reach,
a traceback for a missing optional dependency, an install line that pulled CUDA. The demo's
interrupt-and-resume case is in test_example.py (it needs the real teacher).
"""
import json
import os
import pty
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

import slc
from slc.codecs.planner import plan_for
from slc.codecs.planner import FILL, Frame
from slc.codecs.vqae import FitConfig
from tests.conftest import run_slc, synthetic_logits
from tests.test_cli import one_line_error
from tests.test_encode import SMALL, Tiny, folder, script  # noqa: F401  (folder is a fixture)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ---------------------------------------------------------------- 1. the install line
def readme_commands() -> list[str]:
    text = open(os.path.join(ROOT, "README.md")).read()
    return re.findall(r"```bash\n(python3 -m venv .venv .*?)\n```", text)


def test_readme_install_lines_take_the_cpu_wheel_and_ci_runs_the_test_command():
    """A plain `pip install torch==2.13.0` resolves to the CUDA build on PyPI (nvidia-* and triton wheels);
    the CPU wheel comes from PyTorch's CPU index. CI runs the README's test command as written."""
    demo, tests = readme_commands()[:2]
    for cmd in (demo, tests):
        assert re.search(r"pip install (-q )?torch==[\d.]+ --index-url https://download\.pytorch\.org/whl/cpu", cmd)
    assert demo.endswith("slc demo") and tests.endswith("python -m pytest -q")
    ci = open(os.path.join(ROOT, ".ci", "run")).read()
    assert tests in ci


# ---------------------------------------------------------------- 2. temperature
def test_recompressing_an_slc_keeps_its_temperature(tmp_path):
    np.save(tmp_path / "z.npy", synthetic_logits(epochs=1, samples=300, classes=40))
    t4 = tmp_path / "t4.slc"
    run_slc("compress", tmp_path / "z.npy", "-o", t4, "--codec", "fp16", "-T", "4", "-q", check=True)
    p = run_slc("compress", t4, "-o", tmp_path / "k1.slc", "--codec", "topk", "--k", "1", check=True)
    assert "T=4" in p.stderr.decode() and "re-temper" not in p.stderr.decode()
    assert slc.open_slc(tmp_path / "k1.slc").temperature == 4.0
    info = json.loads(run_slc("inspect", tmp_path / "k1.slc", "--json", check=True).stdout)
    assert info["temperature"] == 4.0
    # a different temperature is explicit, and said
    p = run_slc("compress", t4, "-o", tmp_path / "t1.slc", "--codec", "fp16", "-T", "1", check=True)
    assert "re-tempering" in p.stderr.decode() and "from its stored T=4 to T=1" in p.stderr.decode()
    with slc.open_slc(t4) as a, slc.open_slc(tmp_path / "t1.slc") as b:
        # the T=1 file holds the teacher at T=1: softmax(z) where the T=4 file holds softmax(z / 4)
        z = a.decode(0, out="logits")
        p1 = torch.softmax(torch.from_numpy(z), 1).numpy()
        np.testing.assert_allclose(b.decode(0), p1, atol=2e-3)


# ---------------------------------------------------------------- 3. a wrong-width teacher
class Widen(Tiny):
    """A teacher that answers one image with the label width and a batch with one more output."""

    def forward(self, x):
        y = self.fc(torch.relu(self.conv(x)).mean((2, 3))) * 3.0
        return y if x.shape[0] == 1 else torch.cat([y, y[:, :1]], 1)


def test_wrong_width_teacher_fails_before_training_and_leaves_no_folder(tmp_path, folder):  # noqa: F811
    labels = tmp_path / "l.slc"
    run_slc("encode", script(Tiny(2), tmp_path / "t2.pt"), folder, "-o", labels, "--epochs", "1", *SMALL,
            "--codec", "fp16", "-q", check=True)
    teacher10 = script(Tiny(10), tmp_path / "t10.pt")
    out = tmp_path / "run"
    p = run_slc("train-student", folder, labels, "-o", out, "--teacher", teacher10, "--heldout", folder,
                "--epochs", "50", "-q")
    one_line_error(p, "expected a teacher with 2 outputs (the label width) to score the student against, got 10")
    assert not out.exists()  # checked before training; no empty folder left behind
    # a failure after training keeps the student: it is written before it is evaluated
    widen = script(Widen(2), tmp_path / "widen.pt")
    p = run_slc("train-student", folder, labels, "-o", out, "--teacher", widen, "--heldout", folder, "--epochs", "1",
                "--batch-size", "16", "-q")
    one_line_error(p, "expected the teacher's output width to stay 2 (the label width), got 3")
    assert {"student.pt", "student.ts", "log.jsonl"} <= {f.name for f in out.iterdir()}
    assert not (out / "result.json").exists()


# ---------------------------------------------------------------- 5. --skip-bad carries over
def test_images_skipped_by_encode_are_skipped_by_train_student(tmp_path, folder):  # noqa: F811
    bad = tmp_path / "imgs"
    shutil.copytree(folder, bad)
    data = (bad / "coat" / "004.png").read_bytes()
    (bad / "coat" / "004.png").write_bytes(data[: len(data) // 2])
    labels = tmp_path / "l.slc"
    run_slc("encode", script(Tiny(2), tmp_path / "t2.pt"), bad, "-o", labels, "--epochs", "1", *SMALL,
            "--codec", "fp16", "--skip-bad", "-q", check=True)
    p = run_slc("train-student", bad, labels, "-o", tmp_path / "run", "--epochs", "1", "--batch-size", "16", "--json",
                check=True)
    assert "left out coat/004.png" in p.stderr.decode()
    assert json.loads(p.stdout)["epochs"] == 1
    # an image the labels were made with that is unreadable now is named, not skipped
    labels_all = tmp_path / "all.slc"
    run_slc("encode", script(Tiny(2), tmp_path / "t2.pt"), folder, "-o", labels_all, "--epochs", "1", *SMALL,
            "--codec", "fp16", "-q", check=True)
    one_line_error(run_slc("train-student", bad, labels_all, "-o", tmp_path / "r2", "-q"),
                   "expected a readable image (the labels were made with it), got coat/004.png")


# ---------------------------------------------------------------- 6. the planner, in real bytes
def test_a_ratio_the_codec_reaches_is_never_refused(tmp_path):
    np.save(tmp_path / "z.npy", synthetic_logits(epochs=1, samples=100, classes=1000))
    p = run_slc("compress", tmp_path / "z.npy", "-o", tmp_path / "k1.slc", "--codec", "topk", "--k", "1", check=True)
    k1 = float(re.search(r"([\d.]+)x vs dense fp16", p.stderr.decode()).group(1))
    asked = int(k1 * 10) / 10 - 0.1  # just under what --k 1 writes: the planner said "unreachable" before
    p = run_slc("compress", tmp_path / "z.npy", "-o", tmp_path / "r.slc", "--codec", "topk", "--ratio", asked,
                check=True)
    assert "plan: topk k=1" in p.stderr.decode()
    assert (tmp_path / "r.slc").read_bytes() == (tmp_path / "k1.slc").read_bytes()
    one_line_error(run_slc("compress", tmp_path / "z.npy", "-o", tmp_path / "x.slc", "--codec", "topk", "--ratio",
                           k1 * 1.05, "-q"), f"the nearest reachable ratio is {int(k1 * 10) / 10:.1f}x")


@pytest.mark.parametrize("shape", [(4, 200, 1000), (3, 2000, 100), (10, 100, 10), (1, 5000, 140)])
@pytest.mark.parametrize("codec", ["vqae", "topk", "pca", "fp16"])
def test_plans_are_the_files_bytes(tmp_path, shape, codec):
    """The plan is the file: exact for codecs without a fit record, within the record's slack for the VQAE."""
    e, n, c = shape
    logits = synthetic_logits(epochs=e, samples=n, classes=c)
    ratios = [None] if codec == "fp16" else [10, 40]
    for ratio in ratios:
        out = tmp_path / f"{codec}-{ratio}.slc"
        try:
            r = slc.compress(logits, out, codec=codec, ratio=ratio, fit_config=FitConfig(steps=5))
        except slc.SlcInputError as err:
            assert "nearest reachable ratio" in str(err)  # too few labels for this ratio: said, with a way out
            continue
        size = out.stat().st_size
        assert r.bytes == size
        assert size <= r.plan.bytes and (r.plan.bytes - size < 200 if codec == "vqae" else r.plan.bytes == size)
        if ratio:
            assert r.ratio >= ratio


@pytest.mark.parametrize("classes", [10, 100, 140, 1000, 6625])
def test_vqae_plans_land_in_the_window(classes):
    """Every target the VQAE reaches lands in [R, 1.1 R] (ImageNet-scale label counts), except where a label's
    whole budget is a few bits: codes are whole bits, so then the plan leaves less than one bit per label."""
    for ratio in (10, 20, 40, 100, 200):
        frame = Frame.of((300, 10_000, classes), 4096)
        target = frame.dense // ratio
        try:
            plan = plan_for("vqae", (300, 10_000, classes), 4096, ratio=ratio, frame=frame)
        except slc.SlcInputError:
            assert 8 * target / frame.labels < 1  # not even one bit per label
            continue
        assert plan.ratio >= ratio
        assert plan.ratio <= ratio / FILL or target - plan.bytes < frame.labels / 8, (classes, ratio, plan.params)
        if classes >= 100:
            assert plan.ratio <= ratio / FILL, (classes, ratio, plan.params, plan.ratio)


# ---------------------------------------------------------------- 7. a missing optional dependency
@pytest.fixture
def no_matplotlib(tmp_path):
    """An environment where `import matplotlib` fails, as on a machine without the [plot] extra."""
    shadow = tmp_path / "shadow" / "matplotlib"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError(\"No module named 'matplotlib'\")\n")
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(shadow.parent), ROOT])}


def test_missing_matplotlib_is_one_line_before_the_work(tmp_path, no_matplotlib):
    np.save(tmp_path / "z.npy", synthetic_logits(epochs=1, samples=300, classes=40))
    for args in (["bench", tmp_path / "z.npy", "--plot", tmp_path / "rd.png", "--json", tmp_path / "rd.json"],
                 ["demo", "--quick", "-o", tmp_path / "demo"]):
        p = subprocess.run([sys.executable, "-m", "slc", *map(str, args)], capture_output=True, env=no_matplotlib,
                           timeout=120)
        one_line_error(p, "pip install matplotlib (slc's [plot] extra)")
    assert sorted(os.listdir(tmp_path)) == ["shadow", "z.npy"]  # nothing started, nothing half-written


# ---------------------------------------------------------------- the confusing ones
def test_a_param_the_codec_does_not_take_is_refused(tmp_path, logits_npy):
    one_line_error(run_slc("compress", logits_npy, "-o", tmp_path / "o.slc", "--param", "bits=3", "-q"),
                   "expected no --param, --k, --dc or --dh with --codec auto (it picks its codec")
    one_line_error(run_slc("compress", logits_npy, "-o", tmp_path / "o.slc", "--codec", "topk", "--param", "bits=3",
                           "-q"),
                   "expected --param keys that --codec topk takes (k), got bits")
    assert not list(tmp_path.glob("o.slc*"))


def test_decode_refuses_binary_on_a_terminal(tmp_path, logits_npy):
    run_slc("compress", logits_npy, "-o", tmp_path / "l.slc", "--codec", "fp16", "-q", check=True)
    leader, follower = pty.openpty()
    try:
        p = subprocess.run([sys.executable, "-m", "slc", "decode", str(tmp_path / "l.slc"), "-o", "-"],
                           stdout=follower, stderr=subprocess.PIPE, timeout=60)
    finally:
        os.close(follower)
        os.close(leader)
    one_line_error(p, "expected a pipe or a file for binary npy output on stdout, got a terminal")


def test_inspect_counts_the_labels_in_each_chunk(tmp_path, logits_npy):
    run_slc("compress", logits_npy, "-o", tmp_path / "l.slc", "--codec", "fp16", "-q", check=True)
    out = run_slc("inspect", tmp_path / "l.slc", check=True).stdout.decode()
    assert "1 chunk of 1,400 labels (2 epochs each)" in " ".join(out.split())
    run_slc("compress", logits_npy, "-o", tmp_path / "e.slc", "--codec", "fp16", "-q", "--epochs-per-chunk", "1",
            check=True)
    out = run_slc("inspect", tmp_path / "e.slc", check=True).stdout.decode()
    assert "2 chunks of 700 labels" in " ".join(out.split())


def test_factory_teacher_in_the_current_folder(tmp_path, folder):  # noqa: F811
    (tmp_path / "myteacher.py").write_text(
        "import torch\n\n"
        "def build(classes=3):\n"
        "    torch.manual_seed(0)\n"
        "    return torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(3, classes))\n")
    p = subprocess.run([os.path.join(os.path.dirname(sys.executable), "slc"), "encode", "myteacher:build", str(folder),
                        "-o", "l.slc", "--epochs", "1", *SMALL, "--codec", "fp16", "-q"], cwd=tmp_path,
                       capture_output=True, env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    assert p.returncode == 0, p.stderr.decode()
    assert slc.open_slc(tmp_path / "l.slc").shape == (1, 40, 3)


def test_api_encode_takes_crop_keywords(tmp_path, folder):  # noqa: F811
    teacher = Tiny(3).eval()
    r = slc.encode(teacher, folder, tmp_path / "l.slc", epochs=1, codec="fp16", size=32, mean=(0.5,) * 3,
                   std=(0.5,) * 3, aspect=(0.5, 2.0))
    assert r.labels == 40
    with slc.open_slc(tmp_path / "l.slc") as f:
        from slc.vision.dataset import read_replay

        recipe = read_replay(f).recipe
    assert recipe == slc.Recipe(size=32, mean=(0.5,) * 3, std=(0.5,) * 3, ratio=(0.5, 2.0))
    with pytest.raises(TypeError, match="crop keywords: aspect, boxes, channels"):
        slc.encode(teacher, folder, tmp_path / "m.slc", epochs=1, crop_size=32)


def test_a_run_interrupted_without_resume_resumes_as_its_hint_says(tmp_path):
    """The Ctrl-C hint says "rerun the same command with --resume": that works for a run started without it."""
    logits = synthetic_logits(epochs=3, samples=700, classes=40)
    whole = tmp_path / "whole.slc"
    slc.compress(logits, whole, codec="topk", ratio=10, chunk_size=128)

    def stop_after_first_chunk(count, written, dense):
        raise KeyboardInterrupt

    out = tmp_path / "cut.slc"
    with pytest.raises(KeyboardInterrupt) as e:
        slc.compress(logits, out, codec="topk", ratio=10, chunk_size=128, progress=stop_after_first_chunk)
    assert "`resume=True`" in e.value.slc_hint
    slc.compress(logits, out, codec="topk", ratio=10, chunk_size=128, resume=True)
    assert out.read_bytes() == whole.read_bytes()


def test_bench_on_labels_too_small_for_any_ratio_is_one_line(tmp_path):
    golden = os.path.join(ROOT, "tests", "golden", "v1.1-replay.slc")  # 24 labels of 10 classes: 480 fp16 bytes
    p = run_slc("bench", golden, "--plot", tmp_path / "rd.png", "--json", tmp_path / "rd.json", "-q")
    one_line_error(p, "got none reachable; no codec makes a file smaller than the dense labels")
    assert not list(tmp_path.iterdir())  # no empty plot, no table of nothing
