"""The installed distribution has one import root, ``fxquant`` (issue 14).

The repository keeps the passes in a top-level ``passes/`` folder; ``pyproject.toml``
maps it to ``fxquant.passes``. These tests build a wheel and an editable wheel from a
copy of the sources (offline, with the already-installed setuptools) and check that
``passes`` never becomes an importable top-level name.
"""

import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _source_copy(dest: Path) -> Path:
    """The files a build reads, without caches and without a worktree's ``fxquant/passes`` link."""
    src = dest / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    skip = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(ROOT / "passes", src / "passes", ignore=skip)
    # A worktree may link fxquant/passes -> ../passes for imports; the build must not need it.
    shutil.copytree(ROOT / "fxquant", src / "fxquant",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "passes"))
    return src


def _expected_modules() -> set[str]:
    expected = {f"fxquant/passes/{p.name}" for p in (ROOT / "passes").glob("*.py")}
    for p in (ROOT / "fxquant").rglob("*.py"):
        rel = p.relative_to(ROOT)
        if rel.parts[1] != "passes" and "__pycache__" not in rel.parts:
            expected.add(rel.as_posix())
    return expected


def _run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc


def test_wheel_installs_only_fxquant(tmp_path):
    src = _source_copy(tmp_path)
    _run([sys.executable, "-m", "pip", "wheel", ".", "--no-deps", "--no-build-isolation",
          "--no-index", "-q", "-w", str(tmp_path / "dist")], cwd=src)
    (wheel,) = (tmp_path / "dist").glob("fxquant-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    dist_info = [n for n in names if ".dist-info/" in n]
    top_level_file = next(n for n in dist_info if n.endswith("top_level.txt"))
    top_level = zipfile.ZipFile(wheel).read(top_level_file).decode().split()
    assert top_level == ["fxquant"]
    roots = {n.split("/")[0] for n in names if n not in dist_info}
    assert roots == {"fxquant"}, f"top-level names in the wheel: {sorted(roots)}"
    modules = {n for n in names if n.endswith(".py")}
    missing = _expected_modules() - modules
    assert not missing, f"source files missing from the wheel: {sorted(missing)}"
    assert "fxquant/passes/__init__.py" in modules
    assert not [n for n in names if n.startswith("passes/")]


def test_editable_install_maps_passes(tmp_path):
    """An editable wheel resolves ``fxquant.passes`` to the top-level folder, not ``passes``."""
    src = _source_copy(tmp_path)
    out = tmp_path / "edist"
    _run([sys.executable, "-c",
          f"from setuptools import build_meta; build_meta.build_editable({str(out)!r})"], cwd=src)
    (wheel,) = out.glob("fxquant-*.whl")
    site_dir = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site_dir)
    assert not (site_dir / "passes").exists()
    # -S: no site-packages .pth files, so the lead's own editable fxquant is not on the
    # path; the copy's .pth is processed first, then the libraries (torch, ...) are added.
    probe = (
        "import site, sys\n"
        f"site.addsitedir({str(site_dir)!r})\n"
        f"sys.path.append({sysconfig.get_paths()['purelib']!r})\n"
        "import fxquant, fxquant.passes\n"
        "print(fxquant.__file__)\n"
        "print(fxquant.passes.__file__)\n"
        "try:\n"
        "    import passes\n"
        "except ModuleNotFoundError:\n"
        "    print('no passes')\n"
    )
    empty = tmp_path / "cwd"
    empty.mkdir()
    lines = _run([sys.executable, "-S", "-c", probe], cwd=empty).stdout.split()
    assert lines == [str(src / "fxquant" / "__init__.py"), str(src / "passes" / "__init__.py"),
                     "no", "passes"]


def test_installed_package_has_no_top_level_passes(tmp_path):
    """In the environment the tests run in, ``passes`` is not importable outside the repo."""
    proc = subprocess.run([sys.executable, "-c", "import fxquant.passes; import passes"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    if "No module named 'fxquant'" in proc.stderr:
        pytest.skip("fxquant is not installed in this environment")
    assert proc.returncode != 0
    assert "No module named 'passes'" in proc.stderr
