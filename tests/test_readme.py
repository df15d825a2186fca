"""The examples of README.md and docs/chat.md run, and print what they say.

A ```python block followed by "prints" and a ```text block runs against the embedded demo model and
must print exactly that text. Other ```python blocks are written for a real TinyGPT-V file: they run
with the demo model and picture standing in for the files they name (in a scratch folder), so every
call in them must still work, though the demo's answers are not checked. The `tinygptv` command lines
of the bash blocks must parse, and the quick start must print what the README says.
"""
import base64
import contextlib
import io
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from fixtures.proc import CHILD_CWD, child_env

from tinygptv_native.demo import DEMO_IMAGE, DEMO_MODEL

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", ROOT / "docs" / "chat.md"]
FENCE = re.compile(r"^```(\w*)\n(.*?)^```[ \t]*$", re.S | re.M)


def fenced(path):
    """[(language, code, start, end)] of the fenced blocks of a Markdown file."""
    return [(m.group(1), m.group(2), m.start(), m.end()) for m in FENCE.finditer(path.read_text())]


def python_blocks():
    out = []
    for path in DOCS:
        text = path.read_text()
        found = fenced(path)
        for i, (lang, code, _a, b) in enumerate(found):
            if lang != "python":
                continue
            expected = None
            if i + 1 < len(found) and found[i + 1][0] == "text" and text[b:found[i + 1][2]].strip() == "prints":
                expected = found[i + 1][1]
            line = text[:b].count("\n") - code.count("\n")
            out.append(pytest.param(code, expected, id=f"{path.name}:{line}"))
    return out


def test_every_doc_has_python_examples():
    ids = [p.id for p in python_blocks()]
    assert any(i.startswith("README.md") for i in ids) and any(i.startswith("chat.md") for i in ids)
    assert any(p.values[1] is not None for p in python_blocks())  # at least one with its output


@pytest.mark.parametrize("code,expected", python_blocks())
def test_python_example(code, expected, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    if expected is None:
        # the files a real-model example names: the demo model and picture under those names (copies, so
        # that an example writing a file cannot touch the package's own)
        for name in set(re.findall(r"""["']([\w.-]+\.gguf)["']""", code)):
            shutil.copy(DEMO_MODEL, tmp_path / name)
        for name in set(re.findall(r"""["']([\w.-]+\.(?:jpg|jpeg|png))["']""", code)):
            shutil.copy(DEMO_IMAGE, tmp_path / name)
        data_url = "data:image/png;base64," + base64.b64encode(DEMO_IMAGE.read_bytes()).decode()
        code = code.replace("data:image/jpeg;base64,...", data_url)
    out = io.StringIO()
    with contextlib.ExitStack() as stack:
        if "http://127.0.0.1:8080" in code:  # a client of `tinygptv serve`: the demo model served for it
            pytest.importorskip("starlette")
            pytest.importorskip("openai")
            sys.path.insert(0, str(ROOT / "tests"))
            from server_helpers import running

            from tinygptv_native import Model
            from tinygptv_native.server import ServerConfig
            m = Model(n_threads=2)
            stack.callback(m.close)
            server = stack.enter_context(running(ServerConfig(model=m, n_parallel=m.n_parallel)))
            code = code.replace("http://127.0.0.1:8080", server.url)
        stack.enter_context(contextlib.redirect_stdout(out))
        exec(compile(code, "<example>", "exec"), {"__name__": "__example__"})
    if expected is not None:
        assert out.getvalue() == expected
    else:
        assert out.getvalue()  # it printed something


def command_lines():
    """The `tinygptv ...` lines of the docs' bash blocks (continuation lines joined, comments cut)."""
    out = []
    for path in DOCS:
        for lang, code, _a, _b in fenced(path):
            if lang not in ("bash", "sh", "console"):
                continue
            for line in code.replace("\\\n", " ").splitlines():
                for part in line.split("&&"):
                    if not part.strip().startswith("tinygptv "):  # other commands (curl with JSON over lines)
                        continue
                    words = shlex.split(part, comments=True)
                    if words and words[0] == "tinygptv":
                        out.append(pytest.param(words[1:], id=" ".join(words[:2])))
    return out


@pytest.mark.parametrize("argv", command_lines())
def test_command_lines_parse(argv):
    from tinygptv_native.cli import build_parser
    if argv[0] in ("convert", "quantize"):  # they parse their own arguments
        sub = argv[:2] if argv[0] == "convert" else argv[:1]  # convert phi2 / convert tinygptv
        p = subprocess.run([sys.executable, "-m", "tinygptv_native", *sub, "--help"], capture_output=True,
                           text=True, env=child_env(), cwd=CHILD_CWD, timeout=120)
        if argv[0] == "convert" and p.returncode != 0 and "extra packages" in p.stderr:
            pytest.skip("the converter's packages are not installed")
        assert p.returncode == 0, p.stderr
        flags = {w.split("=")[0] for w in argv if w.startswith("-")}
        for f in flags:
            assert f in p.stdout, (f, p.stdout)
        return
    build_parser().parse_args(argv)  # exits (SystemExit) on an unknown subcommand or option


def test_quick_start_prints_what_the_readme_says():
    text = (ROOT / "README.md").read_text()
    m = re.search(r"pip install \. && tinygptv (run [^\n]*)\n```\n\nprints `([^`]+)`", text)
    assert m, "the quick start and what it prints"
    p = subprocess.run([sys.executable, "-m", "tinygptv_native", *shlex.split(m.group(1))], capture_output=True,
                       text=True, env=child_env(), cwd=CHILD_CWD, timeout=120)
    assert p.returncode == 0, p.stderr
    assert p.stdout == m.group(2) + "\n"
