"""The package's layers (issue 14): no module imports a higher layer; files stay small.

Bottom to top: the quantization core, the quantized ``nn`` modules, the result
schema and the execution engine, the FX passes, then file format / reporting /
data, then the API, the command line and the demo. Modules of one layer may import
each other. Read from the source with ``ast``, so nothing is imported.
"""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Lowest first. ``fxquant._version`` and ``fxquant.logs`` import nothing of fxquant.
LAYERS = (
    ("base", ("fxquant._version", "fxquant.logs")),
    ("core", ("fxquant.core",)),
    ("nn", ("fxquant.nn",)),
    ("schema/engine", ("fxquant.schema", "fxquant.engine")),
    ("passes", ("fxquant.passes",)),
    ("fileformat/reporting/data", ("fxquant.fileformat", "fxquant.reporting", "fxquant.data")),
    ("api/cli/demo", ("fxquant.api", "fxquant.exploration", "fxquant.cli", "fxquant.demo", "fxquant.__main__", "fxquant")),
)
MAX_LINES = 450


def _layer(module: str) -> int:
    best = None
    for level, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if module == prefix or module.startswith(prefix + "."):
                if best is None or len(prefix) > best[1]:
                    best = (level, len(prefix))
    if best is None:
        raise AssertionError(f"module {module} is in no layer of tests/test_layering.py")
    return best[0]


def _sources() -> dict[str, Path]:
    """Module name -> file, with the top-level ``passes/`` folder under its installed name."""
    found = {}
    for path in sorted((ROOT / "fxquant").rglob("*.py")):
        rel = path.relative_to(ROOT / "fxquant")
        if rel.parts[0] == "passes" or "__pycache__" in rel.parts:
            continue  # a worktree's link to ../passes; read below from the real folder
        found[_module_name("fxquant", rel)] = path
    for path in sorted((ROOT / "passes").glob("*.py")):
        found[_module_name("fxquant.passes", path.relative_to(ROOT / "passes"))] = path
    return found


def _module_name(package: str, rel: Path) -> str:
    parts = [package, *rel.with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


SOURCES = _sources()


def _imports(module: str, path: Path) -> list[tuple[int, str]]:
    """(line, imported fxquant module) for every import in the file, function-level ones included."""
    is_package = path.name == "__init__.py"
    package = module if is_package else module.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                out.append((node.lineno, sub if sub in SOURCES else target))
    return [(line, name) for line, name in out if name == "fxquant" or name.startswith("fxquant.")
            or name == "passes" or name.startswith("passes.")]


def test_every_module_is_in_a_layer():
    assert "fxquant.passes.trace" in SOURCES and "fxquant.core.quantizer" in SOURCES
    for module in SOURCES:
        _layer(module)


def test_no_module_imports_a_higher_layer():
    problems = []
    for module, path in SOURCES.items():
        mine = _layer(module)
        for line, target in _imports(module, path):
            if target == "passes" or target.startswith("passes."):
                problems.append(f"{module}:{line} imports {target}: use fxquant.passes (no top-level 'passes')")
            elif _layer(target) > mine:
                problems.append(f"{module}:{line} ({LAYERS[mine][0]}) imports {target}, a higher layer "
                                f"({LAYERS[_layer(target)][0]})")
    assert not problems, "\n".join(problems)


def test_scripts_import_the_passes_from_fxquant():
    """Examples, benchmarks and tests run from a checkout, where a bare ``passes`` would still import."""
    problems = []
    for folder in ("examples", "benchmarks", "tests", "docs"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                    [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else []
                problems += [f"{path.relative_to(ROOT)}:{node.lineno} imports {n}" for n in names
                             if n == "passes" or n.startswith("passes.")]
    assert not problems, "\n".join(problems)


def test_the_scan_sees_violations(tmp_path):
    """The scan itself catches an upward import (so the layer test can fail)."""
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from fxquant.api import quantize\n    from .. import api\n")
    assert _imports("fxquant.passes.bad", bad) == [(2, "fxquant.api"), (3, "fxquant.api")]


def test_files_stay_small():
    long = {str(path.relative_to(ROOT)): n for path in SOURCES.values()
            if (n := path.read_text().count("\n")) > MAX_LINES}
    assert not long, f"files over {MAX_LINES} lines: {long}"
