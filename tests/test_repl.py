"""`tinygptv chat` driven in a pseudo-terminal: start, ask, /image, /set, /stats, /clear, Ctrl+C during an
answer, readline history, multi-line input, an image path inside a message, /quit and Ctrl+D."""
import os
import re
import sys
import time

import pytest
from fixtures.proc import CHILD_CWD, child_env
from fixtures.tiny_model import build_tiny_tinygptv, write_test_image

pexpect = pytest.importorskip("pexpect")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROMPT = ">>> "


@pytest.fixture(scope="module")
def slow_model(tmp_path_factory):
    """A TinyGPT-V wide enough that a long answer takes seconds, so Ctrl+C lands during it."""
    d = tmp_path_factory.mktemp("repl")
    out = build_tiny_tinygptv(str(d), stage=3, phi_config=dict(hidden_size=256, num_hidden_layers=4,
                                                               intermediate_size=1024, num_attention_heads=4))
    return out, write_test_image(str(d / "pic.png")), d


def spawn(model, tmp, *args, colour=False):
    env = child_env(TERM="xterm", TINYGPTV_HISTORY=str(tmp / "history"), HOME=str(tmp))
    if colour:
        env.pop("NO_COLOR", None)
    else:
        env["NO_COLOR"] = "1"
    child = pexpect.spawn(sys.executable, ["-m", "tinygptv_native", "chat", "-m", model, "-t", "1", *args],
                          env=env, cwd=CHILD_CWD, encoding="utf-8", timeout=60, dimensions=(40, 200))
    child.expect("/help for commands")
    child.startup = child.before
    child.expect_exact(PROMPT)
    return child


def cmd(child, line, *expect):
    child.sendline(line)
    for e in expect:
        child.expect_exact(e)
    child.expect_exact(PROMPT)
    return child.before


def test_repl_session(slow_model):
    model, image, tmp = slow_model
    child = spawn(model, tmp, "--ignore-eos", "-c", "4096")
    try:
        cmd(child, "/help", "/image PATH", "/clear", "/set KEY VALUE", "/quit")
        cmd(child, "/set temp 0", "temperature = 0.0")
        cmd(child, "/set max_tokens 5", "max_new_tokens = 5")
        cmd(child, "/set top_p 2", "error: top_p must be in (0, 1]")
        cmd(child, "/set", "temperature 0.0", "max_new_tokens 5")
        # a text-only question, answered in full
        cmd(child, "hello there")
        out = cmd(child, "/stats", "eval rate:")
        assert re.search(r"eval count:\s+5 token", out) and re.search(r"finish reason:\s+length", out), out
        # readline history: Up recalls the last line (/stats)
        child.send("\x1b[A\r")
        child.expect_exact("eval rate:")
        child.expect_exact(PROMPT)
        # an image, then a long answer stopped with Ctrl+C
        cmd(child, f"/image {image}", "image attached to the next question")
        cmd(child, "/set max_tokens 3000", "max_new_tokens = 3000")
        child.sendline("describe it in detail")
        # the line read back (the terminal leaves line input then), so Ctrl+C reaches the answer as SIGINT
        # and not the line editor as a character, however slowly a loaded machine runs the child
        child.expect_exact("describe it in detail")
        time.sleep(1.0)
        child.sendcontrol("c")
        child.expect_exact("[interrupted]")
        child.expect_exact(PROMPT)
        out = cmd(child, "/stats", "image encode:", "eval rate:")
        assert re.search(r"finish reason:\s+interrupted", out), out
        n = int(re.search(r"eval count:\s+(\d+) token", out).group(1))
        assert 0 < n < 3000
        # the conversation goes on, without encoding the image again
        cmd(child, "/set max_tokens 3", "max_new_tokens = 3")
        cmd(child, "and the colour?")
        out = cmd(child, "/stats", "prompt eval count:")
        assert "image encode:" not in out and "cached" in out
        # Ctrl+C at the prompt does not leave
        child.sendcontrol("c")
        child.expect_exact("Ctrl+D or /quit to leave")
        child.expect_exact(PROMPT)
        cmd(child, "/clear", "conversation cleared")
        # tab completion of commands
        child.send("/sta\t\r")
        child.expect_exact("no answer yet")
        child.expect_exact(PROMPT)
        # multi-line input, and an image path inside a message
        child.sendline('"""')
        child.expect_exact("... ")
        child.sendline("first line")
        child.expect_exact("... ")
        cmd(child, 'second line"""')
        cmd(child, f"what is in {image} ?", f"image: {image}")
        out = cmd(child, "/stats", "image encode:")
        cmd(child, "/nope", "unknown command '/nope'")
        child.sendline("/quit")
        child.expect(pexpect.EOF)
        child.close()
        assert child.exitstatus == 0
        assert "/stats" in (tmp / "history").read_text()
    finally:
        if child.isalive():
            child.terminate(force=True)


def test_repl_ctrl_d_and_start_image(slow_model):
    model, image, tmp = slow_model
    child = spawn(model, tmp, "--image", image, "-n", "4", "--seed", "1")
    try:
        assert f"image: {image}" in child.before
        cmd(child, "what is it?")
        out = cmd(child, "/stats", "image encode:")
        assert re.search(r"eval count:\s+4 token", out) or re.search(r"finish reason:\s+stop", out), out
        child.sendeof()
        child.expect(pexpect.EOF)
        child.close()
        assert child.exitstatus == 0
    finally:
        if child.isalive():
            child.terminate(force=True)


def test_repl_colours_status_line_and_verbose_statistics(slow_model):
    """On a terminal: the prompt in colour, a status line while a long prompt is evaluated (with its
    progress), and with --verbose ollama-style statistics on lines of their own after each answer."""
    model, image, tmp = slow_model
    child = spawn(model, tmp, "--verbose", "-n", "3", "--temp", "0", "-c", "8192", colour=True)
    try:
        assert "tinygptv: warning: n_ctx 8192 is larger than the 256 positions" in child.startup
        assert child.before.endswith("\x1b[1;32m")  # the prompt's colour
        child.sendline("hello")
        child.expect(r"\r\n\x1b\[2mtotal duration: +\S+\r\n")  # dim, on a line of its own
        answer = child.before.split("hello", 1)[1]
        assert "tinygptv" not in answer  # no log line glued to the answer
        child.expect_exact("finish reason:")
        child.expect_exact(PROMPT)
        # a long message (multi-line input: a terminal line holds at most 4095 characters)
        child.sendline('"""')
        for _ in range(30):
            child.expect_exact("... ")
            child.sendline("the red circle is left of the blue square and the green triangle. " * 5)
        child.expect_exact("... ")
        child.sendline('"""')
        child.expect(r"processing the prompt: \d+/\d+ positions")
        child.expect_exact("eval rate:", timeout=120)
        child.expect_exact(PROMPT)
        child.sendline("/quit")
        child.expect(pexpect.EOF)
    finally:
        if child.isalive():
            child.terminate(force=True)


def test_repl_no_colour(slow_model):
    model, image, tmp = slow_model
    child = spawn(model, tmp, "-n", "2", "--verbose")
    try:
        cmd(child, "hello", "eval rate:")
        cmd(child, "/set top_p 2", "error: top_p must be in (0, 1]")
        child.sendline("/quit")
        child.expect(pexpect.EOF)
        for code in ("\x1b[1;32m", "\x1b[2m", "\x1b[31m", "\x1b[0m"):
            assert code not in child.before
    finally:
        if child.isalive():
            child.terminate(force=True)


def test_repl_full_context_and_commands(slow_model):
    """An answer that fills the context stops there; the next question works without /clear (the oldest
    turns are dropped, the image kept); /image, /show, /save and /load."""
    model, image, tmp = slow_model
    child = spawn(model, tmp, "--image", image, "-c", "200", "--ignore-eos", "--temp", "0")
    try:
        cmd(child, "/image", f"image: {image} (attached to the next question)")
        cmd(child, "/set max_tokens 3000", "max_new_tokens = 3000")
        cmd(child, "describe it in detail", "(the answer reached the end of the context, 200 positions)")
        cmd(child, "/image", f"image: {image} (in the conversation)")
        cmd(child, "/set max_tokens 5", "max_new_tokens = 5")
        cmd(child, "and the colour?", "its first turn was dropped")
        out = cmd(child, "/stats", "image encode:", "eval rate:")  # the image came along with the question
        assert re.search(r"finish reason:\s+length", out), out
        cmd(child, "/image", f"image: {image} (in the conversation)")
        cmd(child, "and the shape?")
        out = cmd(child, "/show", "model:")
        assert "n_ctx 200" in out and "this conversation 2 turns" in out and f"{image} (in the conversation)" in out
        save = tmp / "full.json"
        cmd(child, f"/save {save}", f"saved 2 turns to {save}")
        cmd(child, "/clear", "conversation cleared")
        cmd(child, f"/load {save}", "> and the colour?", "loaded 2 turns")
        cmd(child, "/image", f"image: {image} (in the conversation)")
        cmd(child, "/nope", "unknown command")
        cmd(child, "/help", "/show", "/save FILE", "/load FILE")
        child.sendline("/quit")
        child.expect(pexpect.EOF)
    finally:
        if child.isalive():
            child.terminate(force=True)


def test_find_image_paths(tmp_path):
    from tinygptv_native.repl import find_image_paths
    img = write_test_image(str(tmp_path / "a b.png"))
    plain = write_test_image(str(tmp_path / "pic.JPG"))
    assert find_image_paths(f"what is in {plain}?") == ("what is in?", [plain])
    assert find_image_paths(f"compare '{img}' and {plain} please") == ("compare and please", [img, plain])
    assert find_image_paths("see ~/no/such/file.png now") == ("see ~/no/such/file.png now", [])
    assert find_image_paths(f"{tmp_path}/notes.txt is not a picture") == (f"{tmp_path}/notes.txt is not a picture", [])
