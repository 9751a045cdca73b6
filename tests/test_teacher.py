"""slc.teacher: loading teachers in every supported form, running them, picking devices."""
from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch

from slc.errors import SlcInputError
from slc.models import load_teacher, resolve_device, teacher_forward

# torch >= 2.10 deprecates torch.jit; TorchScript files are still a supported teacher format.
pytestmark = pytest.mark.filterwarnings(r"ignore:.*torch\.jit.*deprecated:DeprecationWarning")


class TinyNet(torch.nn.Module):
    """Conv + pooling + linear, 10 classes: a miniature image classifier."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(4)
        self.fc = torch.nn.Linear(4, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.bn(self.conv(x)))
        return self.fc(h.mean(dim=(2, 3)))


def make_tiny(seed: int = 0, classes: int = 10) -> TinyNet:
    """Module-level factory, used through the ``module:factory`` spec."""
    torch.manual_seed(seed)
    return TinyNet(classes)


def not_a_module() -> str:
    return "nope"


NOT_CALLABLE = 3
# Specs name this module the way it was imported, so they work under any pytest import mode.
MOD = TinyNet.__module__


@pytest.fixture(autouse=True)
def _importable(monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).parent))


@pytest.fixture
def net() -> TinyNet:
    m = make_tiny(seed=1).eval()
    with torch.no_grad():  # non-trivial BN statistics, so eval mode matters
        m.bn.running_mean.uniform_(-0.5, 0.5)
        m.bn.running_var.uniform_(0.5, 2.0)
    return m


@pytest.fixture
def x() -> torch.Tensor:
    return torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(7))


def _same(loaded: torch.nn.Module, ref: torch.nn.Module, x: torch.Tensor) -> None:
    assert not loaded.training
    assert all(not p.requires_grad for p in loaded.parameters())
    with torch.no_grad():
        torch.testing.assert_close(teacher_forward(loaded, x), ref(x))


# --- each form loads and matches ----------------------------------------------------


@pytest.mark.parametrize("how", ["script", "trace"])
def test_torchscript(tmp_path, net, x, how):
    path = tmp_path / "teacher.bin"  # extension deliberately meaningless
    sm = torch.jit.script(net) if how == "script" else torch.jit.trace(net, x)
    torch.jit.save(sm, str(path))
    _same(load_teacher(str(path)), net, x)


def test_torch_export(tmp_path):
    # A Linear keeps the (already slow) first torch.export call short.
    torch.manual_seed(0)
    lin = torch.nn.Linear(4, 3).eval()
    xin = torch.randn(2, 4)
    path = tmp_path / "teacher.export"  # detected by content, not the .pt2 extension
    torch.export.save(torch.export.export(lin, (xin,)), str(path))
    m = load_teacher(str(path))
    assert all(not p.requires_grad for p in m.parameters())
    torch.testing.assert_close(teacher_forward(m, xin), lin(xin).detach())


def test_factory_with_weights(tmp_path, net, x):
    w = tmp_path / "w.pt"
    torch.save(net.state_dict(), w)
    m = load_teacher(f"{MOD}:make_tiny", weights=str(w), factory_kwargs={"seed": 99})
    _same(m, net, x)


def test_factory_positional_args_and_dotted_path():
    m = load_teacher("torch.nn:Linear", factory_kwargs={"args": [4], "out_features": 3})
    assert isinstance(m, torch.nn.Linear) and m.out_features == 3 and not m.training
    # dotted attribute path: torch.nn.modules -> linear -> Linear
    m2 = load_teacher("torch.nn:modules.linear.Linear", factory_kwargs={"in_features": 2, "out_features": 5})
    assert isinstance(m2, torch.nn.Linear) and m2.out_features == 5


@pytest.mark.parametrize("wrap", ["state_dict", "model", "ddp"])
def test_factory_weights_nested_or_prefixed(tmp_path, net, x, wrap):
    sd = net.state_dict()
    if wrap == "ddp":
        obj = {f"module.{k}": v for k, v in sd.items()}
    else:
        obj = {wrap: sd, "epoch": 3, "optimizer": {"lr": torch.tensor(0.1)}}
    w = tmp_path / "ckpt.pth"
    torch.save(obj, w)
    _same(load_teacher(f"{MOD}:make_tiny", weights=str(w)), net, x)


def test_pickled_module_needs_trust(tmp_path, net, x):
    path = tmp_path / "whole.pt"
    torch.save(net, path)
    with pytest.raises(SlcInputError, match=r"pickled model.*arbitrary code.*`trust_pickle=True`"):
        load_teacher(str(path))
    logged: list[str] = []
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # said once, on the log: not also as a Python warning
        m = load_teacher(str(path), trust_pickle=True, log=logged.append)
    assert len(logged) == 1 and logged[0].startswith("warning:") and "arbitrary code" in logged[0]
    _same(m, net, x)
    with pytest.warns(UserWarning, match="arbitrary code"):  # without a log, a warning
        load_teacher(str(path), trust_pickle=True)


def test_legacy_non_zip_pickle_refused(tmp_path, net):
    path = tmp_path / "old.pt"
    torch.save(net, path, _use_new_zipfile_serialization=False)
    with pytest.raises(SlcInputError, match="`trust_pickle=True`"):
        load_teacher(str(path))


@pytest.mark.parametrize("nested", [False, True])
def test_state_dict_without_architecture(tmp_path, net, nested):
    path = tmp_path / "sd.pt"
    torch.save({"state_dict": net.state_dict()} if nested else net.state_dict(), path)
    with pytest.raises(SlcInputError, match=r"state_dict.*module:factory.*`weights`"):
        load_teacher(str(path))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(SlcInputError, match="state_dict"):
            load_teacher(str(path), trust_pickle=True)


# --- bad inputs ---------------------------------------------------------------------


def test_missing_file():
    with pytest.raises(SlcInputError, match=r"expected an existing teacher file.*no such file"):
        load_teacher("/nonexistent/teacher.pt")


@pytest.mark.parametrize("content", [b"hello, not a model" * 20, b"", b"\x80\x02garbage"])
def test_garbage_file(tmp_path, content):
    path = tmp_path / "junk.pt"
    path.write_bytes(content)
    with pytest.raises(SlcInputError, match="TorchScript, torch.export or torch.save"):
        load_teacher(str(path))


def test_unrelated_zip(tmp_path):
    import zipfile

    path = tmp_path / "x.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("a/readme.txt", "hi")
    with pytest.raises(SlcInputError, match="TorchScript, torch.export or torch.save"):
        load_teacher(str(path))


def test_weights_with_a_file_spec(tmp_path, net):
    path = tmp_path / "t.ts"
    torch.jit.save(torch.jit.script(net), str(path))
    with pytest.raises(SlcInputError, match="module:factory"):
        load_teacher(str(path), weights=str(path))


@pytest.mark.parametrize(
    "spec, msg",
    [
        ("no_such_pkg_xyz.mod:f", "importable module"),
        ("torch.nn:NoSuchThing", "attribute 'NoSuchThing'"),
        ("torch.nn:Linear.nope", "attribute 'nope'"),
        (f"{MOD}:NOT_CALLABLE", "callable"),
        (f"{MOD}:not_a_module", "return a torch.nn.Module"),
        ("torch.nn:Linear", "build a model"),  # missing required arguments
    ],
)
def test_bad_factory(spec, msg):
    with pytest.raises(SlcInputError, match=msg):
        load_teacher(spec)


def test_bad_factory_args():
    with pytest.raises(SlcInputError, match=r"args'\] to be a list"):
        load_teacher("torch.nn:Linear", factory_kwargs={"args": 4})


def test_weights_key_mismatch(tmp_path, net):
    sd = net.state_dict()
    sd.pop("fc.bias")
    sd["extra.weight"] = torch.zeros(1)
    w = tmp_path / "w.pt"
    torch.save(sd, w)
    with pytest.raises(SlcInputError, match=r"1 missing key\(s\) \(fc\.bias\) and 1 unexpected key\(s\) \(extra\.weight\)"):
        load_teacher(f"{MOD}:make_tiny", weights=str(w))


def test_weights_shape_mismatch(tmp_path, net):
    w = tmp_path / "w.pt"
    torch.save(net.state_dict(), w)
    with pytest.raises(SlcInputError, match="size mismatch"):
        load_teacher(f"{MOD}:make_tiny", weights=str(w), factory_kwargs={"classes": 7})


def test_weights_missing_or_unreadable(tmp_path):
    with pytest.raises(SlcInputError, match="no such file"):
        load_teacher(f"{MOD}:make_tiny", weights=str(tmp_path / "nope.pt"))
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"garbage" * 10)
    with pytest.raises(SlcInputError, match="readable torch.save weights"):
        load_teacher(f"{MOD}:make_tiny", weights=str(bad))
    notsd = tmp_path / "notsd.pt"
    torch.save([1, 2, 3], notsd)
    with pytest.raises(SlcInputError, match=r"state_dict \(name -> tensor\)"):
        load_teacher(f"{MOD}:make_tiny", weights=str(notsd))


def test_pickled_weights_refused(tmp_path, net):
    w = tmp_path / "whole.pt"
    torch.save(net, w)
    with pytest.raises(SlcInputError, match="pickled objects"):
        load_teacher(f"{MOD}:make_tiny", weights=str(w))


# --- teacher_forward ----------------------------------------------------------------


class _Out(torch.nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


def test_forward_output_forms():
    x = torch.randn(4, 6)
    logits = torch.randn(4, 5)
    for fn in (
        lambda x: logits,
        lambda x: (logits, torch.zeros(1)),
        lambda x: [logits],
        lambda x: {"logits": logits, "aux": 1},
        lambda x: logits.half(),
    ):
        out = teacher_forward(_Out(fn), x)
        assert out.dtype == torch.float32 and out.shape == (4, 5)
        torch.testing.assert_close(out, logits, atol=1e-2, rtol=1e-2)


def test_forward_no_grad(net, x):
    net.requires_grad_(True)
    assert not teacher_forward(net, x).requires_grad


@pytest.mark.parametrize(
    "fn, msg",
    [
        (lambda x: torch.randn(4), r"shape \[4, C\], got \[4\]"),
        (lambda x: torch.randn(3, 5), r"shape \[4, C\], got \[3, 5\]"),
        (lambda x: torch.randn(4, 5, 2), r"got \[4, 5, 2\]"),
        (lambda x: torch.randn(4, 0), r"got \[4, 0\]"),
        (lambda x: {"probs": torch.randn(4, 5)}, "dict with 'logits'"),
        (lambda x: (), "tuple/list"),
        (lambda x: "text", "got a str"),
        (lambda x: torch.ones(4, 5, dtype=torch.long), "floating-point"),
    ],
)
def test_forward_bad_outputs(fn, msg):
    with pytest.raises(SlcInputError, match=msg):
        teacher_forward(_Out(fn), torch.randn(4, 6))


# --- resolve_device -----------------------------------------------------------------


def test_resolve_device_cpu_and_auto(monkeypatch):
    assert resolve_device("cpu") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(SlcInputError, match="CUDA"):
        resolve_device("cuda")
    with pytest.raises(SlcInputError, match="CUDA"):
        resolve_device("cuda:0")


def test_resolve_device_cuda_indices(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("auto") == torch.device("cuda")
    assert resolve_device("cuda") == torch.device("cuda")
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(SlcInputError, match=r"index below 2.*'cuda:2'"):
        resolve_device("cuda:2")


@pytest.mark.parametrize("spec", ["gpu", "cuda:", "cuda:x", "mps", "", "cpu:0:1", "cuda:-1"])
def test_resolve_device_bad(spec):
    with pytest.raises(SlcInputError, match="expected a device"):
        resolve_device(spec)
