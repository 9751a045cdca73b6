"""Load a teacher network from a file or a ``module:factory`` spec, and run it.

Accepted teacher specs (see :func:`load_teacher`):

* a TorchScript archive (``torch.jit.save``),
* a ``torch.export`` program (``torch.export.save``, usually ``.pt2``),
* ``package.module:factory`` plus an optional ``weights`` state_dict file,
* a pickled whole ``nn.Module`` (``torch.save(model, path)``), only with ``trust_pickle``.

File kinds are told apart by what is inside the file, not by its extension.
"""
from __future__ import annotations

import importlib
import os
import pickle
import re
import sys
import warnings
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from slc.errors import SlcInputError

__all__ = ["resolve_device", "load_teacher", "teacher_forward"]

_FACTORY_RE = re.compile(r"^([A-Za-z_][\w]*(?:\.[A-Za-z_]\w*)*):([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*)$")
_CUDA_RE = re.compile(r"^cuda(?::(\d+))?$")
# Keys under which training checkpoints commonly nest the model's state_dict.
_NESTED_KEYS = ("state_dict", "model", "model_state_dict")
# Prefixes added by DistributedDataParallel / DataParallel and by torch.compile.
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")
_SHOW = 5  # how many offending keys an error message lists


def resolve_device(spec: str) -> torch.device:
    """Turn ``'auto'``, ``'cpu'``, ``'cuda'`` or ``'cuda:N'`` into a :class:`torch.device`.

    ``'auto'`` picks CUDA when available, else the CPU. Asking for CUDA when it is
    unavailable, or for a GPU index that does not exist, raises :class:`SlcInputError`.
    """
    s = str(spec).strip().lower()
    if s == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if s == "cpu":
        return torch.device("cpu")
    m = _CUDA_RE.match(s)
    if m is None:
        raise SlcInputError(f"expected a device 'auto', 'cpu', 'cuda' or 'cuda:N', got {spec!r}")
    if not torch.cuda.is_available():
        raise SlcInputError(f"expected a usable CUDA device for {spec!r}, got none (torch.cuda.is_available() is False)")
    if m.group(1) is None:
        return torch.device("cuda")
    index, count = int(m.group(1)), torch.cuda.device_count()
    if index >= count:
        raise SlcInputError(f"expected a CUDA device index below {count}, got {spec!r} ({count} GPU(s) visible)")
    return torch.device("cuda", index)


def load_teacher(
    spec: str,
    *,
    weights: str | None = None,
    trust_pickle: bool = False,
    factory_kwargs: dict | None = None,
    log: Callable[[str], None] | None = None,
) -> torch.nn.Module:
    """Load a teacher on the CPU, in eval mode, with gradients off (caller moves it to a device).

    ``spec`` is an existing file (TorchScript, ``torch.export`` program, or with
    ``trust_pickle=True`` a pickled ``nn.Module``), or ``package.module:factory``
    where ``factory`` may be a dotted path (``pkg.mod:Class.from_name``). The factory
    is called as ``factory(*args, **rest)`` where ``args = factory_kwargs.get("args", [])``
    and ``rest`` is every other key (``factory_kwargs`` itself is not modified).
    ``weights`` (factory specs only) is a ``torch.save``'d state_dict, possibly nested
    under ``"state_dict"``/``"model"``/``"model_state_dict"`` and with a
    ``"module."`` (DDP) or ``"_orig_mod."`` (torch.compile) prefix stripped; it is loaded strictly.

    A ``torch.export`` program keeps the train/eval behaviour it was exported with:
    export it from a model in eval mode.
    """
    path = Path(spec)
    if path.is_file():
        if weights is not None:
            raise SlcInputError(f"expected a module:factory teacher spec with weights, got the file {spec!r} (weights only apply to factories)")
        if factory_kwargs:
            raise SlcInputError(f"expected a module:factory teacher spec with factory arguments, got the file {spec!r}")
        model = _load_file(path, trust_pickle=trust_pickle, log=log)
    elif path.exists():
        raise SlcInputError(f"expected a teacher file, got {spec!r} (not a regular file)")
    elif _FACTORY_RE.match(spec):
        model = _load_factory(spec, factory_kwargs or {}, weights)
    else:
        raise SlcInputError(f"expected an existing teacher file or a 'package.module:factory' spec, got {spec!r} (no such file)")
    return _freeze(model)


def teacher_forward(model: Callable[[torch.Tensor], Any], x: torch.Tensor) -> torch.Tensor:
    """Run ``model(x)`` without gradients and return its logits as a float32 ``[B, C]`` tensor.

    The output may be a tensor, a tuple/list whose first element is the logits tensor,
    or a mapping with a ``'logits'`` entry (e.g. Hugging Face outputs).
    """
    with torch.no_grad():
        out = model(x)
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        out = out[0]
    elif isinstance(out, Mapping) and isinstance(out.get("logits"), torch.Tensor):
        out = out["logits"]
    if not isinstance(out, torch.Tensor):
        raise SlcInputError(
            f"expected the teacher to return a tensor, a tuple/list starting with a tensor or a dict with 'logits', got {_describe(out)}"
        )
    batch = x.shape[0]
    if out.ndim != 2 or out.shape[0] != batch or out.shape[1] == 0:
        raise SlcInputError(f"expected teacher logits of shape [{batch}, C], got {list(out.shape)}")
    if not out.is_floating_point():
        raise SlcInputError(f"expected floating-point teacher logits, got dtype {out.dtype}")
    return out.float()


# --- files -------------------------------------------------------------------------


def _load_file(path: Path, *, trust_pickle: bool, log: Callable[[str], None] | None) -> torch.nn.Module:
    kind = _sniff(path)
    if kind == "torchscript":
        try:
            return torch.jit.load(str(path), map_location="cpu")
        except Exception as e:
            raise SlcInputError(f"expected a loadable TorchScript archive, got {str(path)!r} ({_one_line(e)})") from e
    if kind == "export":
        try:
            return torch.export.load(str(path)).module()
        except Exception as e:
            raise SlcInputError(f"expected a loadable torch.export program, got {str(path)!r} ({_one_line(e)})") from e
    if kind == "torch.save":
        return _load_pickled(path, trust_pickle=trust_pickle, log=log)
    raise SlcInputError(f"expected a TorchScript, torch.export or torch.save file, got {str(path)!r} ({kind})")


def _sniff(path: Path) -> str:
    """Return ``'torchscript'``, ``'export'``, ``'torch.save'``, or a description of what the file is not.

    All three formats are zip archives with one top folder. TorchScript archives hold
    ``<top>/code/`` and ``<top>/constants.pkl`` next to ``data.pkl``; ``torch.save``
    files hold ``data.pkl`` without them; ``torch.export`` archives hold no
    ``data.pkl`` but an ``archive_format`` file (``b"pt2"``) and ``models/*.json``
    (older ones: ``serialized_exported_program.json``).
    """
    if not zipfile.is_zipfile(path):
        # Legacy (pre-1.6, non-zip) torch.save files are bare pickles; torch.load tells.
        return "torch.save" if _looks_like_pickle(path) else "not a zip archive or pickle"
    try:
        with zipfile.ZipFile(path) as zf:
            names = [n.split("/", 1)[1] if "/" in n else n for n in zf.namelist()]
    except (zipfile.BadZipFile, OSError) as e:
        return f"unreadable zip archive: {e}"
    has = set(names)
    if "constants.pkl" in has or any(n.startswith("code/") for n in names):
        return "torchscript"
    if (
        "archive_format" in has
        or "serialized_exported_program.json" in has
        or any(n.startswith("models/") and n.endswith(".json") for n in names)
    ):
        return "export"
    if "data.pkl" in has:
        return "torch.save"
    if path.suffix == ".pt2":
        return "export"
    return "a zip archive without data.pkl, code/ or a torch.export model"


def _looks_like_pickle(path: Path) -> bool:
    with path.open("rb") as f:
        head = f.read(2)
    # Pickle protocol 2+ starts with PROTO (0x80) then the protocol number.
    return len(head) == 2 and head[0] == 0x80 and 2 <= head[1] <= 5


def _load_pickled(path: Path, *, trust_pickle: bool, log: Callable[[str], None] | None) -> torch.nn.Module:
    name = str(path)
    if trust_pickle:
        msg = f"warning: unpickling {name!r} (`trust_pickle=True`): unpickling runs arbitrary code from the file; only do this for files you trust"
        if log is not None:  # once: on the caller's log, else as a Python warning
            log(msg)
        else:
            warnings.warn(msg, stacklevel=4)  # point at load_teacher's caller
        try:
            obj = torch.load(name, map_location="cpu", weights_only=False)
        except Exception as e:
            raise SlcInputError(
                f"expected a loadable pickled model, got {name!r} ({_one_line(e)}; the model's class must be importable)"
            ) from e
    else:
        try:
            obj = torch.load(name, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            if not _pickles_objects(e):
                raise SlcInputError(f"expected a TorchScript, torch.export or torch.save file, got {name!r} ({_one_line(e)})") from e
            raise SlcInputError(
                f"expected a teacher that loads without unpickling code, got {name!r}, a pickled model: loading it runs "
                "arbitrary code from the file; pass `trust_pickle=True` if you trust it, or export it with torch.jit.save / torch.export.save"
            ) from e
        except Exception as e:
            raise SlcInputError(f"expected a TorchScript, torch.export or torch.save file, got {name!r} ({_one_line(e)})") from e
    if isinstance(obj, torch.nn.Module):
        return obj
    if _find_state_dict(obj) is not None:
        raise SlcInputError(
            f"expected a whole model, got {name!r}, a state_dict (weights without an architecture): "
            "pass the architecture as 'package.module:factory' with `weights`"
        )
    raise SlcInputError(f"expected a pickled torch.nn.Module, got {name!r} holding {_describe(obj)}")


# --- factories ---------------------------------------------------------------------


def _import_from_cwd(module_name: str):
    """Import a module, also from the current folder (as ``python -m`` does; the ``slc`` script does not)."""
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        # last, after everything installed, so a local file never shadows a real package; kept, so the
        # factory's own later imports of its sibling files work too
        sys.path.append(cwd)
    return importlib.import_module(module_name)


def _load_factory(spec: str, kwargs: dict, weights: str | None) -> torch.nn.Module:
    module_name, attr_path = spec.split(":", 1)
    try:
        obj: Any = _import_from_cwd(module_name)
    except ModuleNotFoundError as e:
        raise SlcInputError(f"expected an importable module in teacher spec {spec!r}, got {_one_line(e)}") from e
    except Exception as e:
        raise SlcInputError(f"expected an importable module in teacher spec {spec!r}, got an error on import ({_one_line(e)})") from e
    for i, part in enumerate(attr_path.split(".")):
        try:
            obj = getattr(obj, part)
        except AttributeError as e:
            owner = ".".join([module_name, *attr_path.split(".")[:i]])
            raise SlcInputError(f"expected {owner!r} to have an attribute {part!r} (teacher spec {spec!r}), got none") from e
    if not callable(obj):
        raise SlcInputError(f"expected a callable factory in teacher spec {spec!r}, got {_describe(obj)}")

    kwargs = dict(kwargs)
    args = kwargs.pop("args", [])
    if not isinstance(args, (list, tuple)):
        raise SlcInputError(f"expected factory_kwargs['args'] to be a list, got {_describe(args)}")
    try:
        model = obj(*args, **kwargs)
    except Exception as e:
        raise SlcInputError(f"expected teacher factory {spec!r} to build a model, got an error ({_one_line(e)})") from e
    if not isinstance(model, torch.nn.Module):
        raise SlcInputError(f"expected teacher factory {spec!r} to return a torch.nn.Module, got {_describe(model)}")
    if weights is not None:
        _load_weights(model, weights)
    return model


def _load_weights(model: torch.nn.Module, weights: str) -> None:
    if not Path(weights).is_file():
        raise SlcInputError(f"expected an existing weights file, got {weights!r} (no such file)")
    try:
        obj = torch.load(weights, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if _pickles_objects(e):
            raise SlcInputError(
                f"expected a weights file holding only tensors, got {weights!r} holding pickled objects (save model.state_dict() instead)"
            ) from e
        raise SlcInputError(f"expected a readable torch.save weights file, got {weights!r} ({_one_line(e)})") from e
    except Exception as e:
        raise SlcInputError(f"expected a readable torch.save weights file, got {weights!r} ({_one_line(e)})") from e
    sd = _find_state_dict(obj)
    if sd is None:
        raise SlcInputError(f"expected a state_dict (name -> tensor) in weights file {weights!r}, got {_describe(obj)}")
    for prefix in _WRAPPER_PREFIXES:
        if sd and all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix):]: v for k, v in sd.items()}
    try:
        # strict=False so we can report missing/unexpected keys ourselves; size mismatches still raise.
        result = model.load_state_dict(sd, strict=False)
    except RuntimeError as e:
        raise SlcInputError(f"expected weights matching the teacher's parameters, got {weights!r} ({_one_line(e)})") from e
    missing, unexpected = list(result.missing_keys), list(result.unexpected_keys)
    if missing or unexpected:
        raise SlcInputError(
            f"expected weights matching the teacher's parameters, got {weights!r} with "
            f"{len(missing)} missing key(s){_keys(missing)} and {len(unexpected)} unexpected key(s){_keys(unexpected)}"
        )


def _find_state_dict(obj: Any) -> dict[str, torch.Tensor] | None:
    """The name -> tensor mapping in ``obj``, looking one level into common checkpoint keys."""
    if _is_state_dict(obj):
        return dict(obj)
    if isinstance(obj, Mapping):
        for key in _NESTED_KEYS:
            if _is_state_dict(obj.get(key)):
                return dict(obj[key])
    return None


def _is_state_dict(obj: Any) -> bool:
    return (
        isinstance(obj, Mapping)
        and len(obj) > 0
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())
    )


# --- helpers -----------------------------------------------------------------------


def _pickles_objects(e: pickle.UnpicklingError) -> bool:
    """Did ``torch.load(weights_only=True)`` fail on a pickled class/function (not on corrupt bytes)?

    The weights-only unpickler reports both as ``UnpicklingError("Weights only load
    failed...")``; only the detail differs, e.g. ``Unsupported global: GLOBAL pkg.Net``.
    """
    msg = str(e)
    return any(s in msg for s in ("GLOBAL ", "allowlisted", "unrecognized function", "Unsupported class"))


def _freeze(model: torch.nn.Module) -> torch.nn.Module:
    try:
        model.eval()
    except NotImplementedError:
        pass  # torch.export modules refuse eval(); their mode was fixed at export time
    # Per-parameter so it also works on ScriptModules, which reject requires_grad_().
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def _keys(keys: list[str]) -> str:
    if not keys:
        return ""
    more = f", ... {len(keys) - _SHOW} more" if len(keys) > _SHOW else ""
    return " (" + ", ".join(keys[:_SHOW]) + more + ")"


def _describe(obj: Any) -> str:
    if isinstance(obj, torch.Tensor):
        return f"a tensor of shape {list(obj.shape)}"
    if isinstance(obj, Mapping):
        keys = list(obj.keys())
        more = ", ..." if len(keys) > _SHOW else ""
        return f"a {type(obj).__name__} with keys {keys[:_SHOW]}{more}"[:200]
    return f"a {type(obj).__module__}.{type(obj).__qualname__}" if type(obj).__module__ != "builtins" else f"a {type(obj).__name__}"


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    if len(text) > 300:
        text = text[:297] + "..."
    return f"{type(e).__name__}: {text}" if text else type(e).__name__
