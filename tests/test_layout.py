"""The package's shape: layers that import only downward, no import cycles, short functions, a CLI that
starts without torch."""
import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PKG = ROOT / "slc"

# Each layer imports only from itself and the layers below it.
LAYERS = [
    ("base", {"slc", "slc.errors"}),
    ("format", {"slc.format"}),
    ("codecs", {"slc.codecs"}),
    ("read/write", {"slc.reader", "slc.sources", "slc.compression", "slc.decode", "slc.inspect", "slc.fidelity",
                    "slc.resume", "slc.atomic", "slc.extras", "slc.sample", "slc.prune", "slc.models",
                    "slc.merge_parts", "slc.distributed"}),
    ("vision/lm", {"slc.vision", "slc.lm"}),
    ("interop", {"slc.interop", "slc.compat"}),
    ("bench", {"slc.bench"}),
    ("cli", {"slc.cli", "slc.__main__"}),
]
SHIMS: set[str] = set()  # old module paths re-exported for one release (slc.distill and slc.sizing went in 0.7)


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in PKG.rglob("*.py")}


def layer(mod: str) -> int:
    best = None
    for i, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if mod == prefix or mod.startswith(prefix + "."):
                if best is None or len(prefix) > best[1]:
                    best = (i, len(prefix))
    if best is None:
        raise AssertionError(f"{mod} is in no layer: add it to tests/test_layout.py")
    return best[0]


def imports(path: Path, mod: str) -> set[str]:
    """Every slc module ``path`` imports, at any depth (function-level imports count too)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 and node.module.startswith("slc"):
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("slc"))
    known = modules()
    return {m for m in out if m in known and m != mod}


def test_every_layer_imports_only_itself_and_the_layers_below():
    bad = []
    for mod, path in modules().items():
        if mod in SHIMS or mod == "slc":  # the package root re-exports lazily, by name
            continue
        for dep in imports(path, mod):
            if dep != "slc" and layer(dep) > layer(mod):
                bad.append(f"{mod} ({LAYERS[layer(mod)][0]}) imports {dep} ({LAYERS[layer(dep)][0]})")
    assert not bad, "\n".join(bad)


def test_no_import_cycles():
    known = modules()
    graph = {m: imports(p, m) - {"slc"} for m, p in known.items() if m not in SHIMS}
    # a package's __init__ importing its own submodules is how packages are made: not a cycle
    graph = {m: {d for d in deps if not d.startswith(m + ".")} for m, deps in graph.items()}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for d in sorted(graph.get(m, ())):
            if state.get(d) == 1:
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(d):] + [d]))
            if d not in state:
                visit(d)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)


MAX_LINES, MAX_BRANCHES = 80, 25
LONGER = {}  # qualified name -> why it stays longer (none)


def branches(fn: ast.AST) -> int:
    """if/elif, loops, except clauses, conditional expressions and comprehension filters, as pylint counts them."""
    n = 0
    for node in ast.walk(fn):
        if isinstance(node, (ast.If, ast.For, ast.AsyncFor, ast.While, ast.ExceptHandler, ast.IfExp)):
            n += 1
        elif isinstance(node, ast.comprehension):
            n += len(node.ifs)
    return n


def functions():
    for mod, path in modules().items():
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                yield f"{mod}.{node.name}", node


def test_no_function_is_long_or_branchy():
    bad = []
    for name, fn in functions():
        lines = fn.end_lineno - fn.lineno + 1
        if (lines > MAX_LINES or branches(fn) > MAX_BRANCHES) and name not in LONGER:
            bad.append(f"{name}: {lines} lines, {branches(fn)} branches")
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("args", [["--help"], ["--version"], ["compress", "--help"], ["encode", "--help"]])
def test_the_cli_starts_without_torch(args):
    code = ("import sys, runpy; sys.argv = ['slc', *sys.argv[1:]]\n"
            "from slc.cli import cli\n"
            "try:\n    cli(prog_name='slc')\nexcept SystemExit as e:\n    assert e.code in (0, None), e.code\n"
            "heavy = sorted(m for m in ('torch', 'numpy', 'h5py', 'zstandard', 'rich', 'tqdm') if m in sys.modules)\n"
            "print('HEAVY', heavy)")
    p = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert p.returncode == 0, p.stderr
    assert "HEAVY []" in p.stdout, p.stdout[-300:]


def test_import_slc_is_cheap_and_the_api_loads_by_name():
    code = ("import sys, slc\nassert 'torch' not in sys.modules and 'numpy' not in sys.modules\n"
            "assert callable(slc.compress) and slc.SoftLabelDataset.__name__ == 'SoftLabelDataset'\n"
            "import slc.compression\nassert callable(slc.compress)\n"
            "missing = [n for n in slc.__all__ if getattr(slc, n, None) is None]\n"
            "assert not missing, missing\nprint('ok')")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert p.returncode == 0 and "ok" in p.stdout, p.stderr


def test_the_0_4_module_paths_are_gone_as_announced():
    import importlib

    for mod in ("slc.distill", "slc.sizing"):
        with pytest.raises(ModuleNotFoundError):
            importlib.import_module(mod)
