"""The package installed with `pip install .` and used from its checkout: the benchmarks must measure the
installed package, and importing it from the checkout's source folder (which holds no compiled module)
must say what to do.

The layout is rebuilt in a temporary folder: a copy of the checkout whose tinygptv_native/ has no
compiled module (as after `pip install .`), and a separate folder standing for site-packages that
holds the package these tests run against.
"""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import tinygptv_native

ROOT = Path(__file__).resolve().parent.parent
PKG_DIR = Path(os.path.abspath(tinygptv_native.__file__)).parent
BENCHMARKS = sorted(p.name for p in (ROOT / "benchmarks").glob("bench_*.py"))


@pytest.fixture(scope="module")
def layout(tmp_path_factory):
    d = tmp_path_factory.mktemp("layout")
    co = d / "checkout"
    skip = shutil.ignore_patterns("_core*.so", "_core*.pyd", "convert", "models", "__pycache__", "*.pyc")
    shutil.copytree(ROOT / "tinygptv_native", co / "tinygptv_native", ignore=skip)
    shutil.copytree(ROOT / "benchmarks", co / "benchmarks", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "tools" / "demo", co / "tools" / "demo", ignore=shutil.ignore_patterns("__pycache__"))
    for f in ("CMakeLists.txt", "pyproject.toml"):
        shutil.copy(ROOT / f, co / f)
    site = d / "site"
    site.mkdir()
    (site / "tinygptv_native").symlink_to(PKG_DIR, target_is_directory=True)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONSAFEPATH")}
    env["PYTHONPATH"] = str(site)
    return co, env


def py(args, cwd, env, timeout=180):
    return subprocess.run([sys.executable, *args], cwd=str(cwd), env=env, capture_output=True, text=True,
                          timeout=timeout)


def test_import_from_the_source_folder_says_what_to_do(layout):
    co, env = layout
    p = py(["-c", "import tinygptv_native"], co, env)  # `python -c` puts the checkout's root first
    assert p.returncode != 0
    last = p.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError: tinygptv_native was imported from the source folder of a checkout"), p.stderr
    assert "run Python from another folder" in last and "pip install -e ." in last
    assert "No module named" not in p.stderr


def test_the_installed_package_imports_from_elsewhere(layout):
    co, env = layout
    p = py(["-c", "import tinygptv_native, os; print(os.path.dirname(tinygptv_native.__file__))"], co.parent, env)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip().endswith(os.path.join("site", "tinygptv_native"))


@pytest.mark.parametrize("script", BENCHMARKS)
def test_benchmarks_run_against_the_installed_package(layout, script):
    """Run from the checkout's root, as a user measuring their machine would: they must import the
    installed package, not the checkout's source folder."""
    co, env = layout
    if script in ("bench_vision.py", "bench_tinygptv.py"):
        pytest.importorskip("gguf")
    if script == "bench_tinygptv.py":
        pytest.importorskip("torch")
    p = py([os.path.join("benchmarks", script), "--help"], co, env)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "usage:" in p.stdout


def test_benchmark_workers_do_not_start_in_the_checkout_root():
    """The benchmarks that time each engine in a child `python -c` (whose cwd comes first on sys.path)
    start it in benchmarks/, not in the checkout's root."""
    for script in ("bench_phi2.py", "bench_tinygptv.py"):
        src = (ROOT / "benchmarks" / script).read_text()
        assert '"-c", code]' in src and 'cwd=str(ROOT / "benchmarks")' in src, script
        assert "sys.path.insert(0, str(ROOT))" not in src
