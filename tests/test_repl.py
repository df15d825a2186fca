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


def spawn(model, tmp, *args):
    env = child_env(TERM="xterm", TINYGPTV_HISTORY=str(tmp / "history"), HOME=str(tmp))
    child = pexpect.spawn(sys.executable, ["-m", "tinygptv_native", "chat", "-m", model, "-t", "1", *args],
                          env=env, cwd=CHILD_CWD, encoding="utf-8", timeout=60, dimensions=(40, 200))
    child.expect("/help for commands")
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


def test_find_image_paths(tmp_path):
    from tinygptv_native.repl import find_image_paths
    img = write_test_image(str(tmp_path / "a b.png"))
    plain = write_test_image(str(tmp_path / "pic.JPG"))
    assert find_image_paths(f"what is in {plain}?") == ("what is in?", [plain])
    assert find_image_paths(f"compare '{img}' and {plain} please") == ("compare and please", [img, plain])
    assert find_image_paths("see ~/no/such/file.png now") == ("see ~/no/such/file.png now", [])
    assert find_image_paths(f"{tmp_path}/notes.txt is not a picture") == (f"{tmp_path}/notes.txt is not a picture", [])
