"""Python API misuse gets one clear exception naming the value: token ids outside the vocabulary, a
stop that is not strings, a bytes path, an n_ctx above the trained context."""
import logging

import pytest

import tinygptv_native as tg
from tinygptv_native.demo import DEMO_MODEL


@pytest.fixture(scope="module")
def model():
    return tg.Model(DEMO_MODEL, n_threads=1)


def test_token_ids_are_checked(model):
    with pytest.raises(ValueError, match=r"token id 1000000000000 \(index 0\) is outside the vocabulary \[0, 512\)"):
        model.logits([10**12])
    with pytest.raises(ValueError, match="token id -1"):
        model.logits([5, -1])
    with pytest.raises(TypeError, match="token id 1 must be an integer, got float"):
        model.generate([5, 1.5])
    with pytest.raises(TypeError, match="tokenize"):
        model.logits("hello")
    assert model.logits([5, 6]).shape == (2, model.n_vocab)


def test_stop_must_be_strings(model):
    for call in (lambda: model.chat("hi", stop=123), lambda: model.generate("hi", stop=123),
                 lambda: model.new_chat().ask("hi", stop=[1, 2])):
        with pytest.raises(TypeError, match="stop must be a string or a list of strings, got"):
            call()
    assert isinstance(model.chat("hi", stop="x", max_new_tokens=2), str)


def test_paths(tmp_path):
    with pytest.raises(tg.GGUFError) as e:
        tg.Model(b"/nonexistent/x.gguf")
    assert "b'" not in str(e.value) and "/nonexistent/x.gguf" in str(e.value)
    assert tg.Model(str(DEMO_MODEL).encode(), n_threads=1).n_vocab == 512
    with pytest.raises(TypeError, match="path must be a str, bytes or os.PathLike, got int"):
        tg.Model(3)


def test_n_ctx_above_the_trained_context_warns(caplog):
    with caplog.at_level(logging.WARNING, logger="tinygptv_native"):
        tg.Model(DEMO_MODEL, n_threads=1, n_ctx=4096)
    assert "n_ctx 4096 is larger than the 2048 positions the model was trained on" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="tinygptv_native"):
        tg.Model(DEMO_MODEL, n_threads=1, n_ctx=2048)
        tg.Model(DEMO_MODEL, n_threads=1)
    assert "n_ctx" not in caplog.text
