"""Checks an installed tinygptv-native the way a new user meets it: the README's quick start command, run
through the installed `tinygptv` script from a folder outside any checkout, must print what the README says.

    python tools/wheel_check.py README.md

Run by cibuildwheel's test step (in the venv its wheel was installed into) and by tests/test_wheel.py (in a
fresh venv with no compiler on PATH). It uses only the standard library, so it needs nothing the wheel does
not bring.
"""
import os
import re
import shlex
import subprocess
import sys
import tempfile

# The quick start of README.md: the command after `pip install . &&`, then "prints `ANSWER`".
QUICK_START = re.compile(r"pip install \. && tinygptv (run [^\n]*)\n```\n\nprints `([^`]+)`")


def quick_start(readme_text):
    """(argv after `tinygptv`, expected stdout) of the README's first command."""
    m = QUICK_START.search(readme_text)
    if not m:
        raise SystemExit("wheel_check: the README has no quick start command followed by what it prints")
    return shlex.split(m.group(1)), m.group(2) + "\n"


def main(argv):
    if len(argv) != 2:
        raise SystemExit("usage: wheel_check.py README.md")
    with open(argv[1], encoding="utf-8") as f:
        args, expected = quick_start(f.read())
    # the console script pip put next to this interpreter (bin/ or Scripts/), as a user would call it
    bindir = os.path.dirname(os.path.abspath(sys.executable))
    exe = None
    for name in ("tinygptv", "tinygptv.exe"):
        if os.path.isfile(os.path.join(bindir, name)):
            exe = os.path.join(bindir, name)
    if exe is None:
        raise SystemExit(f"wheel_check: no tinygptv script in {bindir}")
    # nothing from a checkout may stand in for the installed package: no PYTHONPATH, and a scratch cwd
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    with tempfile.TemporaryDirectory() as cwd:
        p = subprocess.run([exe, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
        where = subprocess.run([sys.executable, "-c", "import tinygptv_native as t; print(t.__file__)"],
                               cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    if p.returncode != 0 or p.stdout != expected:
        raise SystemExit(f"wheel_check: `tinygptv {shlex.join(args)}` exited {p.returncode}, printed "
                         f"{p.stdout!r} (expected {expected!r}); stderr:\n{p.stderr}")
    print(f"wheel_check: `tinygptv {shlex.join(args)}` printed {p.stdout.strip()!r} "
          f"(package at {where.stdout.strip()})")


if __name__ == "__main__":
    main(sys.argv)
