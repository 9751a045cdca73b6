"""The README's main job: the built-in real example end to end (real teacher, real images, real CLI)."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

pytest.importorskip("efficientnet_lite_pytorch", reason="pip install -e '.[examples]' for the real teacher")
HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_quickstart_end_to_end(tmp_path):
    env = {**os.environ, "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"]}
    p = subprocess.run(["bash", os.path.join(HERE, "examples", "quickstart.sh"), str(tmp_path)], capture_output=True,
                       env=env, text=True)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "epoch 0 streamed through a pipe: 500 labels x 1000 classes" in p.stdout
    assert f"OK {tmp_path}/labels.slc: 8,000 labels" in p.stdout
    # the Python API replays the teacher's crops: the teacher on them gives the stored (fp16) labels back
    line = next(x for x in p.stdout.splitlines() if x.startswith("replay check"))
    kl = float(line.split("KL ")[1].split(",")[0])
    assert kl < 1e-5 and "top-1 agreement 100.0%" in line, line
    assert p.stdout.count("epoch 0: KL loss") == 2
    info = json.loads(subprocess.run([sys.executable, "-m", "slc", "inspect", str(tmp_path / "labels.slc"), "--json",
                                      "--against", str(tmp_path / "labels-fp16.slc")], capture_output=True,
                                     check=True).stdout)
    assert info["classes"] == 1000 and info["temperature"] == 4.0 and info["epochs"] == 16
    assert info["ratio_vs_fp16"] >= 40
    assert {r["section"] for r in info["sections"]} >= {"replay", "images.fp"}  # recompressing kept them
    # real teacher labels at T=4, 40x: the auto codec keeps KL far below top-k's (~0.39 here)
    assert info["fidelity"]["kl"] < 0.25


def test_demo_quick_end_to_end(tmp_path):
    """`slc demo --quick`: real teacher, real images, encode, compress, inspect, five students, table, plot.

    Interrupted once (Ctrl-C) after the labels are made, then continued as the hint says, with --resume.
    """
    out = tmp_path / "demo"
    cmd = [sys.executable, "-m", "slc", "demo", "--quick", "-o", str(out)]
    log = tmp_path / "first.err"
    with open(log, "w") as sink:
        # a job started in the background by a shell without job control inherits SIGINT ignored, and Python
        # keeps it so: give the demo the default disposition, as a terminal's Ctrl-C would find it
        first = subprocess.Popen(cmd, stderr=sink, stdout=subprocess.DEVNULL, text=True,
                                 preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        t0 = time.monotonic()
        while not (out / "labels-fp16.slc").exists() and first.poll() is None and time.monotonic() - t0 < 600:
            time.sleep(0.05)
        first.send_signal(signal.SIGINT)
        first.wait(timeout=120)
    err = log.read_text()
    # 130, or killed by the re-raised SIGINT (a shell reports both as 130)
    assert first.returncode in (130, -signal.SIGINT) and "rerun the same command with --resume" in err, err[-2000:]
    again = subprocess.run(cmd, capture_output=True, text=True)  # the folder is the interrupted demo's
    assert again.returncode == 1 and "--resume" in again.stderr and again.stderr.count("\n") == 1
    p = subprocess.run([*cmd, "--resume"], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "resume: labels-fp16.slc is finished, reusing it" in p.stderr
    result = json.loads((out / "demo.json").read_text())
    rows = {r["labels"]: r for r in result["rows"]}
    assert list(rows) == ["hard (floor)", "fp16 (ceiling)", "10x", "40x", "100x"]
    for r in ("10x", "40x", "100x"):
        assert rows[r]["ratio"] >= float(r[:-1]), rows[r]  # targets are real bytes: met or beaten
        assert 0 < rows[r]["label_kl"] < 2.0
    assert rows["fp16 (ceiling)"]["ratio"] == pytest.approx(1.0, abs=0.01) and rows["fp16 (ceiling)"]["label_kl"] == 0
    assert rows["10x"]["label_kl"] < rows["40x"]["label_kl"] < rows["100x"]["label_kl"]  # fewer bytes, less faithful
    for r in rows.values():
        assert 0 <= r["agreement"] <= r["top5"] <= 1 and r["student_kl"] > 0
    # soft labels beat hard ones even in two minutes: the floor and the ceiling are apart
    assert rows["fp16 (ceiling)"]["student_kl"] < rows["hard (floor)"]["student_kl"]
    assert (out / "demo.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "ceiling" in p.stdout and "inspect labels-40x.slc" in p.stderr
    for name in ("labels-fp16.slc", "labels-40x.slc"):
        subprocess.run([sys.executable, "-m", "slc", "verify", str(out / name)], check=True, capture_output=True)
    # a folder with files in it is never overwritten without --force
    again = subprocess.run(cmd, capture_output=True, text=True)
    assert again.returncode == 1 and again.stderr.count("\n") == 1 and "--force" in again.stderr
    # the floor trains on the fp16 labels' argmax: it has no file, so no bytes of its own
    assert rows["hard (floor)"]["bytes"] is None and "| hard (floor) | argmax | - | - |" in (out / "demo.md").read_text()
