"""The `tinygptv` command, run as a subprocess: every subcommand's happy path and its argument errors."""
import os
import subprocess
import sys

import pytest
from fixtures.tiny_model import tiny_gguf  # noqa: F401
from PIL import Image

import tinygptv_native as tg
from fixtures.proc import CHILD_CWD, child_env
from tinygptv_native.demo import DEMO_MODEL

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tinygptv(*args, stdin=None, timeout=120):
    p = subprocess.run([sys.executable, "-m", "tinygptv_native", *map(str, args)], input=stdin,
                       capture_output=True, text=True, timeout=timeout, env=child_env(), cwd=CHILD_CWD)
    return p.returncode, p.stdout, p.stderr


def one_line_error(err, pattern):
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err and pattern in lines[0], err
    return lines[0]


@pytest.fixture(scope="module")
def files(tiny_gguf, tmp_path_factory):  # noqa: F811
    d = tmp_path_factory.mktemp("cli")
    notimg = d / "notes.png"
    notimg.write_text("not an image")
    notgguf = d / "model.gguf"
    notgguf.write_bytes(b"GGUF" + b"\0" * 20)
    return dict(model=tiny_gguf[0], image=tiny_gguf[1], notimg=str(notimg), notgguf=str(notgguf), dir=d)


# ---- run ------------------------------------------------------------------------------------------

def test_run_streams_the_answer(files):
    rc, out, err = tinygptv("run", "-m", files["model"], "--image", files["image"], "-p", "What is it?",
                            "-n", 12, "--temp", 0, "-t", 1)
    assert rc == 0, err
    m = tg.Model(files["model"], n_threads=1)
    want = m.chat("What is it?", image=files["image"], max_new_tokens=12, temperature=0)
    assert out == want + "\n"
    assert err == ""  # quiet unless --verbose


def test_run_verbose_sampling_and_stdin(files):
    args = ["run", "-m", files["model"], "--image", files["image"], "-n", 10, "--temp", 0.7, "--top-p", 0.8,
            "--top-k", 20, "--seed", 3, "-c", 256, "--verbose"]
    rc, out, err = tinygptv(*args, "-p", "[vqa] colour?")
    assert rc == 0, err
    # ollama-style statistics on lines of their own after the answer; the load line once
    lines = err.splitlines()
    for key in ("total duration:", "image encode:", "prompt eval count:", "prompt eval rate:", "eval count:",
                "eval rate:", "finish reason:"):
        assert sum(ln.startswith(key) for ln in lines) == 1, (key, err)
    assert sum("loaded" in ln for ln in lines) == 1, err
    assert "answer of" not in err and "\x1b[" not in err  # not a terminal: no colours
    rc2, out2, _ = tinygptv(*args, "-p", "-", stdin="[vqa] colour?")
    assert rc2 == 0 and out2 == out  # same seed, same answer; -p - reads stdin
    m = tg.Model(files["model"], n_threads=1)
    assert out == m.chat("[vqa] colour?", image=files["image"], max_new_tokens=10, temperature=0.7, top_p=0.8, top_k=20,
                         seed=3) + "\n"


def test_run_text_only_and_draw(files):
    rc, out, err = tinygptv("run", "-m", files["model"], "-p", "hello", "-n", 4, "--seed", 1)
    assert rc == 0, err
    out_png = files["dir"] / "drawn.png"
    rc, out, err = tinygptv("run", "-m", files["model"], "--image", files["image"], "-p", "[grounding] describe",
                            "-n", 8, "--seed", 1, "--draw", out_png)
    assert rc == 0, err
    assert "drew" in err and out_png.is_file()
    assert Image.open(out_png).size == Image.open(files["image"]).size


@pytest.mark.parametrize("args,pattern", [
    (["-m", "/nonexistent/model.gguf", "-p", "hi"], "model file not found: '/nonexistent/model.gguf'"),
    (["-m", "{model}", "--image", "/nonexistent/x.png", "-p", "hi"], "image file not found"),
    (["-m", "{model}", "--image", "{notimg}", "-p", "hi"], "not a recognised image"),
    (["-m", "{notgguf}", "-p", "hi"], "error:"),
    (["-m", "{model}", "-c", "16", "-p", "hi " * 40], "n_ctx"),
    (["-m", "{model}", "-p", "hi", "-n", "-1"], "max_new_tokens"),
    (["-m", "{model}", "-p", "hi", "--temp", "-1"], "temperature"),
    (["-m", "{model}", "-p", "hi", "--top-p", "0"], "top_p"),
    (["-m", "{model}", "-p", "hi", "-t", "0"], "--threads"),
    (["-m", "{model}", "-p", "hi", "-c", "1"], "--ctx-size"),
    (["-m", "{model}", "-p", "hi", "--draw", "x.png"], "--draw needs an --image"),
])
def test_run_errors_are_one_line(files, args, pattern):
    args = [a.format(**files) for a in args]
    rc, out, err = tinygptv("run", *args)
    assert rc == 1
    one_line_error(err, pattern)
    assert err.startswith("tinygptv: error: ")


def test_run_verbose_error_shows_traceback(files):
    rc, out, err = tinygptv("run", "-m", files["model"], "-c", "16", "-p", "hi " * 40, "--verbose")
    assert rc != 0 and "Traceback" in err and "ContextOverflowError" in err


def test_argparse_errors(files):
    rc, out, err = tinygptv("run", "-m", files["model"])  # no -p
    assert rc == 2 and "-p/--prompt" in err and "Traceback" not in err
    rc, out, err = tinygptv("run", "-m", files["model"], "-p", "x", "-n", "many")
    assert rc == 2 and "invalid int value" in err
    rc, out, err = tinygptv("frobnicate")
    assert rc == 2 and "invalid choice" in err
    rc, out, err = tinygptv()
    assert rc == 2 and "run" in out and "chat" in out and "bench" in out


def test_without_model_uses_the_demo(files):
    rc, out, err = tinygptv("run", "-p", "hi", "-n", 3)
    assert "using the embedded demo model" in err.splitlines()[0]
    rc2, out2, err2 = tinygptv("run", "-p", "hi", "-n", 3, "--image", files["image"])
    assert "using the embedded demo model" in err2.splitlines()[0] and "picture" not in err2.splitlines()[0]
    if DEMO_MODEL.is_file():
        assert rc == 0, err
    else:
        assert rc == 1 and "demo model is missing" in err.splitlines()[1] and len(err.splitlines()) == 2


# ---- chat (non-interactive input; the terminal REPL is tested in test_repl.py) -----------------

def test_chat_reads_piped_input(files):
    script = "\n".join(["/set temp 0", "/set max_tokens 6", f"/image {files['image']}", "What is it?",
                        "/stats", "/set temp hot", "/nonsense", "/clear", '"""', "two", "lines", '"""', "/quit"])
    rc, out, err = tinygptv("chat", "-m", files["model"], "-t", 1, stdin=script + "\n")
    assert rc == 0, err
    assert "temperature = 0.0" in out and "max_new_tokens = 6" in out
    assert "image attached to the next question" in out
    assert "image encode:" in out and "prompt eval count:" in out
    assert "error: temp needs a number, got 'hot'" in out
    assert "unknown command '/nonsense'" in out and "conversation cleared" in out
    m = tg.Model(files["model"], n_threads=1)
    assert m.chat("What is it?", image=files["image"], temperature=0, max_new_tokens=6) in out


def test_chat_eof_exits_and_errors(files):
    rc, out, err = tinygptv("chat", "-m", files["model"], stdin="")
    assert rc == 0
    rc, out, err = tinygptv("chat", "-m", files["model"], "--image", "/nonexistent/y.png", stdin="")
    assert rc == 1
    one_line_error(err, "image file not found")


# ---- bench, info, quantize, convert ---------------------------------------------------------------

def test_bench(files):
    rc, out, err = tinygptv("bench", "-m", files["model"], "-p", 16, "-n", 8, "--reps", 1, "-t", 1)
    assert rc == 0, err
    assert "image encode (ms)" in out and "pp16 (tokens/s)" in out and "tg8 (tokens/s)" in out
    rc, out, err = tinygptv("bench", "-m", files["model"], "-n", 0)
    assert rc == 1
    one_line_error(err, "must be >= 1")


def test_info(files):
    rc, out, err = tinygptv("info", files["model"])
    assert rc == 0, err
    assert "architecture:  tinygptv, stage 3" in out and "tinygptv.chat.template" in out
    rc, out, err = tinygptv("info", files["notgguf"])
    assert rc == 1 and "Traceback" not in err


def test_quantize_and_convert_entry_points(files):
    out_q = files["dir"] / "q8.gguf"
    rc, out, err = tinygptv("quantize", files["model"], out_q, "q8_0", "--quiet")
    assert rc == 0, err
    assert "answer" not in err and out_q.is_file()
    rc, out, err = tinygptv("run", "-m", out_q, "--image", files["image"], "-p", "hi", "-n", 3)
    assert rc == 0, err
    rc, out, err = tinygptv("quantize", files["model"], out_q, "q9_9")
    assert rc == 2 and "unknown TYPE" in err
    rc, out, err = tinygptv("convert", "--help")
    assert rc == 0 and "tinygptv" in out
