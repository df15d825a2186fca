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
    (["-m", "{model}", "-p", "hi", "-ngl", "99"], "gpu_layers=99 is outside [0, "),
    (["-m", "{model}", "-p", "hi", "--device", "cpu", "--gpu-layers", "2"],
     "gpu_layers=2 puts layers on a GPU but device='cpu' uses none"),
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


def test_every_command_with_a_device_takes_gpu_layers():
    """--gpu-layers (and llama.cpp's -ngl) wherever --device is: run, chat, eval, batch, serve."""
    from tinygptv_native.cli import build_parser
    sub = next(a for a in build_parser()._actions if a.dest == "cmd")
    with_device = {name: p for name, p in sub.choices.items()
                   if any("--device" in a.option_strings for a in p._actions)}
    assert {"run", "chat", "serve"} <= set(with_device)
    for name, p in with_device.items():
        opt = next((a for a in p._actions if "--gpu-layers" in a.option_strings), None)
        assert opt is not None and "-ngl" in opt.option_strings and opt.dest == "gpu_layers", name
        assert opt.type is int and opt.default is None, name


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


# ---- the context is not reserved for max_new_tokens ------------------------------------------------

def test_small_contexts_answer():
    """-c 16 without an image and -c 40 with the demo picture answer: the answer stops at the end of the
    context (finish "length", said on stderr) instead of every question failing."""
    rc, out, err = tinygptv("run", "-m", DEMO_MODEL, "-c", 16, "-p", "hi", "--temp", 0, "--ignore-eos", "-n", 500,
                            "--verbose")
    assert rc == 0, err
    assert out.strip() and "finish reason:        length" in err
    assert "the answer reached the end of the context, 16 positions" in err
    rc, out, err = tinygptv("run", "-c", 40, "-p", "How many shapes are there?", "--temp", 0)
    assert rc == 0, err
    assert out == "three\n"
    rc, out, err = tinygptv("run", "-c", 38, "-p", "What color is the circle?", "--temp", 0, "--ignore-eos")
    assert rc == 0 and out.strip(), err
    assert "reached the end of the context, 38 positions" in err


# ---- small defects ----------------------------------------------------------------------------------

def test_version_and_info_of_the_demo():
    rc, out, err = tinygptv("--version")
    assert rc == 0 and out.strip() == f"tinygptv {tg.__version__}"
    rc, out, err = tinygptv("info")
    assert rc == 0, err
    assert out.startswith("the embedded demo model:") and f"file:          {DEMO_MODEL}" in out
    # float32 metadata shown as written, not as the nearest double
    assert "tinygptv.chat.top_p = 0.9\n" in out and "tinygptv.attention.layer_norm_epsilon = 1e-05\n" in out
    assert "0.8999999" not in out and "9.99999" not in out


def test_a_closed_pipe_is_quiet():
    """`tinygptv info | head -2`: the reader leaves early; no "[Errno 32] Broken pipe"."""
    r, w = os.pipe()
    os.close(r)
    try:
        p = subprocess.run([sys.executable, "-m", "tinygptv_native", "info"], stdout=w, stderr=subprocess.PIPE,
                           text=True, env=child_env(), cwd=CHILD_CWD, timeout=60)
    finally:
        os.close(w)
    assert p.stderr == "" and p.returncode == 141


def test_run_load_line_once_and_stats_apart(files):
    rc, out, err = tinygptv("run", "-m", files["model"], "-p", "hi", "-n", 3, "-v")
    assert rc == 0, err
    assert sum("loaded" in ln for ln in err.splitlines()) == 1, err
    assert out.count("\n") == 1 and "tinygptv" not in out  # the answer alone on stdout


@pytest.mark.parametrize("args,pattern", [
    (["-m", "{dir}", "-p", "hi"], "model file '{dir}' is a directory, not a file"),
    (["-m", "{model}", "--image", "{dir}", "-p", "hi"], "image file '{dir}' is a directory, not a file"),
    (["-m", "{model}", "-p", "hi", "--seed", "-2"], "--seed must be in [0, 2^64), or -1 for a random seed"),
    (["-m", "{model}", "-p", "hi", "--top-k", "-5"], "--top-k must be >= 0 (0 = no limit), got -5"),
    (["-m", "{model}", "--image", "{image}", "-p", "hi", "--draw", "{image}"], "would overwrite the input image"),
])
def test_more_errors_are_one_line(files, args, pattern):
    args = [a.format(**files) for a in args]
    rc, out, err = tinygptv("run", *args)
    assert rc == 1
    one_line_error(err, pattern.format(**files))


def test_draw_refuses_the_input_image_by_another_name(files):
    before = open(files["image"], "rb").read()
    other = os.path.join(os.path.dirname(files["image"]), ".", os.path.basename(files["image"]))
    rc, out, err = tinygptv("run", "-m", files["model"], "--image", files["image"], "-p", "hi", "--draw", other)
    assert rc == 1 and "would overwrite the input image" in err
    assert open(files["image"], "rb").read() == before


def test_seed_minus_one_is_random_and_help_says_so(files):
    rc, out, err = tinygptv("run", "-m", files["model"], "-p", "hi", "-n", 2, "--seed", -1, "--top-k", 0)
    assert rc == 0, err
    rc, out, err = tinygptv("run", "--help")
    flat = " ".join(out.split())
    assert "-1: a new random seed each time" in flat and "0 = no limit" in flat
    rc, out, err = tinygptv("bench", "--help")
    assert "random pixels" in " ".join(out.split()) and "random input" not in out


def test_bench_without_model_uses_random_pixels():
    rc, out, err = tinygptv("bench", "-p", 4, "-n", 2, "--reps", 1, "-t", 1)
    assert rc == 0, err
    assert "using the embedded demo model" in err and "picture" not in err
    assert "image encode (ms)" in out


def test_invalid_utf8_prompt(files):
    p = subprocess.run([sys.executable, "-m", "tinygptv_native", "run", "-m", files["model"], "-p", b"caf\xe9"],
                       capture_output=True, env=child_env(), cwd=CHILD_CWD, timeout=60)
    assert p.returncode == 1
    one_line_error(p.stderr.decode(), "the prompt (-p) is not valid UTF-8 text (byte 0xe9 at character 3)")
    p = subprocess.run([sys.executable, "-m", "tinygptv_native", "run", "-m", files["model"], "-p", "-"],
                       input=b"caf\xe9 ?", capture_output=True, env=child_env(), cwd=CHILD_CWD, timeout=60)
    assert p.returncode == 1
    one_line_error(p.stderr.decode(), "the prompt read from stdin is not valid UTF-8 text (byte 0xe9 at offset 3)")


def test_invalid_utf8_chat_line(files):
    p = subprocess.run([sys.executable, "-m", "tinygptv_native", "chat", "-m", files["model"], "-n", "2"],
                       input=b"caf\xe9 ?\n/set max_tokens 3\n", capture_output=True, env=child_env(), cwd=CHILD_CWD,
                       timeout=60)
    assert p.returncode == 0, p.stderr
    out = p.stdout.decode()
    assert "error: the message is not valid UTF-8 text (byte 0xe9 at character 3)" in out
    assert "max_new_tokens = 3" in out  # the next line is read as usual


@pytest.fixture(scope="module")
def text_only(tmp_path_factory):
    pytest.importorskip("torch")
    from fixtures.checkpoints import make_phi2_gguf
    return make_phi2_gguf(str(tmp_path_factory.mktemp("phi2")))[0]


def test_chat_with_a_text_only_model_refuses_an_image_at_start(files, text_only):
    rc, out, err = tinygptv("chat", "-m", text_only, "--image", files["image"], stdin="hello\n")
    assert rc == 1 and out == ""
    one_line_error(err, "has no vision encoder, so it cannot take --image")
    rc, out, err = tinygptv("chat", "-m", text_only, "-n", 2, stdin="hi\n/image\n")
    assert rc == 0, err
    assert "no image: this model (phi2) has no vision encoder" in out


def test_chat_commands_piped(files):
    save = files["dir"] / "conv.json"
    script = "\n".join([
        "/set temp 0", "/set max_tokens 4", "/set verbose maybe", "/set seed abc", "/set seed -1", "/set top_k 0",
        "/image", f"/image {files['image']}", "/image", "What is it?", "/image", "and then?",
        f"/save {save}", "/show", "/clear", "/show", f"/load {save}", "/show", "one more?", "/load /nonexistent.json",
        "/save", "/quit"])
    rc, out, err = tinygptv("chat", "-m", files["model"], "-t", 1, stdin=script + "\n")
    assert rc == 0, err
    assert "error: verbose needs on or off, got 'maybe'" in out
    assert "error: seed needs an integer, got 'abc'" in out
    assert "seed = random" in out and "top_k = 0 (no limit)" in out
    assert "no image (/image PATH attaches one)" in out
    assert f"image: {files['image']} (attached to the next question)" in out
    assert f"image: {files['image']} (in the conversation)" in out
    assert f"saved 2 turns to {save}" in out
    shows = out.split("model:        ")[1:]
    assert len(shows) == 3
    assert "this conversation 2 turns" in shows[0] and "this conversation 0 turns" in shows[1]
    assert "this conversation 2 turns" in shows[2] and "(in the conversation)" in shows[2]
    assert "settings:     temperature 0.0, " in shows[0] and "max_new_tokens 4" in shows[0]
    assert "loaded 2 turns" in out and "> What is it?" in out
    assert "error: cannot read /nonexistent.json" in out and "error: usage: /save FILE" in out
    import json
    doc = json.loads(save.read_text())
    assert doc["format"] == "tinygptv-chat" and doc["settings"]["temperature"] == 0.0
    msgs = doc["messages"]
    assert [m["role"] for m in msgs] == ["user", "assistant", "user", "assistant"]
    assert msgs[0]["content"][1] == {"type": "image_url", "image_url": {"url": "file://" + files["image"]}}
    assert msgs[2]["content"] == "and then?"
    # the saved conversation is what Model.chat_completion takes, and gives the same next answer
    m = tg.Model(files["model"], n_threads=1)
    r = m.chat_completion([{k: v for k, v in x.items() if k != "finish_reason"} for x in msgs]
                          + [{"role": "user", "content": "one more?"}], temperature=0, max_new_tokens=4)
    assert r.text in out


# ---- quantize and convert --------------------------------------------------------------------------

def test_quantize_errors(files):
    d = files["dir"]
    trunc = d / "truncated.gguf"
    trunc.write_bytes(open(files["model"], "rb").read()[:200000])
    rc, out, err = tinygptv("quantize", trunc, d / "o.gguf", "q8_0", "--quiet")
    assert rc == 1 and "file truncated?" in err and "reshape" not in err, err
    rc, out, err = tinygptv("quantize", files["model"], d / "missing" / "o.gguf", "q8_0", "--quiet")
    assert rc == 1 and err.strip() == f"tinygptv quantize: error: output folder does not exist: {d / 'missing'}"
    rc, out, err = tinygptv("quantize", d, d / "o.gguf", "q8_0")
    assert rc == 1 and "is a directory" in err
    assert not list(d.glob(".quantize-*"))
    # a missing input is reported without the converter's packages
    code = ("import sys; sys.modules['gguf'] = None; from tinygptv_native.cli import main; "
            "sys.exit(main(['quantize', '/nonexistent/in.gguf', 'out.gguf', 'q8_0']))")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=child_env(), cwd=CHILD_CWD)
    assert p.returncode == 1 and p.stderr.strip() == "tinygptv quantize: error: input file not found: /nonexistent/in.gguf"


def test_written_files_follow_the_umask(files, text_only, tmp_path):
    pytest.importorskip("gguf")
    from tinygptv_native.quantize import quantize_file
    old = os.umask(0o027)
    try:
        out = tmp_path / "q.gguf"
        quantize_file(files["model"], str(out), "q8_0", progress=False)
        assert out.stat().st_mode & 0o777 == 0o640
    finally:
        os.umask(old)
    # convert (the text-only fixture went through convert_phi2 under the test's own umask)
    assert os.stat(text_only).st_mode & 0o777 == 0o666 & ~old
