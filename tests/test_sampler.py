"""Sampler against a numpy reference of the Hugging Face logits-processor chain
(repetition penalty -> temperature -> top-k -> top-p -> min-p -> softmax draw)."""
import math

import numpy as np
import pytest

from tinygptv_native import _core

N_VOCAB = 240      # tokenizer rows
N_LOGITS = 300     # longer than the vocabulary, as Phi-2's 51200 rows vs 50295 tokens
UNUSED = {7, 100, 101, 239}  # type 5 rows inside the vocabulary


@pytest.fixture(scope="module")
def tok():
    tokens = ["<unk>"] + ["t%d" % i for i in range(1, N_VOCAB)]
    types = [2] + [5 if i in UNUSED else 1 for i in range(1, N_VOCAB)]
    return _core.Tokenizer(model="llama", tokens=tokens, token_types=types, scores=[0.0] * N_VOCAB)


def sampleable_mask(n):
    m = np.zeros(n, dtype=bool)
    m[:N_VOCAB] = True
    for i in UNUSED:
        m[i] = False
    return m


def reference_probs(logits, history, temperature, top_k, top_p, min_p, repetition_penalty, penalty_last_n):
    x = logits.astype(np.float64).copy()
    x[~sampleable_mask(len(x))] = -np.inf
    if repetition_penalty != 1.0 and penalty_last_n != 0:
        recent = history if penalty_last_n < 0 else history[-penalty_last_n:]
        for t in set(recent):
            x[t] = x[t] / repetition_penalty if x[t] > 0 else x[t] * repetition_penalty
    x = x / temperature
    if top_k > 0 and top_k < np.isfinite(x).sum():
        kth = np.sort(x)[::-1][top_k - 1]
        x[x < kth] = -np.inf
    p = np.exp(x - x.max())
    p /= p.sum()
    if top_p < 1.0:
        order = sorted(range(len(p)), key=lambda i: (-p[i], i))
        above, keep = 0.0, np.zeros(len(p), dtype=bool)
        for j, i in enumerate(order):
            if j > 0 and above >= top_p:
                break
            keep[i] = True
            above += p[i]
        p = np.where(keep, p, 0.0)
        p /= p.sum()
    if min_p > 0:
        p = np.where(p >= min_p * p.max(), p, 0.0)
        p /= p.sum()
    return p


def make_logits(seed, n=N_LOGITS, scale=2.0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(n) * scale).astype(np.float32)


def draw(sampler, logits, history, n):
    counts = np.zeros(len(logits))
    for _ in range(n):
        counts[sampler.sample(logits, history)] += 1
    return counts / n


def test_greedy_is_argmax_over_sampleable(tok):
    s = _core.Sampler(tok, temperature=0.0, seed=1)
    for seed in range(50):
        lg = make_logits(seed)
        masked = np.where(sampleable_mask(N_LOGITS), lg, -np.inf)
        assert s.sample(lg, []) == int(np.argmax(masked))
    lg = np.zeros(N_LOGITS, dtype=np.float32)
    lg[[3, 5, 9]] = 1.0
    assert s.sample(lg, []) == 3  # ties: lowest id
    lg[7] = lg[239] = lg[250] = lg[299] = 100.0  # unused rows and rows beyond the vocabulary
    assert s.sample(lg, []) == 3
    lg[3] = np.nan
    assert s.sample(lg, []) == 5
    assert s.sample(lg[:6], []) == 5  # logits shorter than the vocabulary
    assert s.sample(np.array([-np.inf, 0.5, np.inf], dtype=np.float32), []) == 2


def test_never_samples_masked_ids(tok):
    lg = np.zeros(N_LOGITS, dtype=np.float32)
    lg[list(UNUSED)] = 50.0
    lg[N_VOCAB:] = 50.0
    s = _core.Sampler(tok, temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, seed=3)
    seen = {s.sample(lg, []) for _ in range(3000)}
    assert not seen & UNUSED and max(seen) < N_VOCAB
    assert len(seen) > 150  # uniform over the 236 sampleable ids
    bad = np.full(N_LOGITS, -np.inf, dtype=np.float32)
    bad[list(UNUSED)] = 1.0
    with pytest.raises(ValueError, match="sampleable"):
        s.sample(bad, [])
    with pytest.raises(ValueError, match="sampleable"):
        _core.Sampler(tok, temperature=0.0).sample(bad, [])


CONFIGS = [
    dict(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, repetition_penalty=1.0, penalty_last_n=64),
    dict(temperature=0.7, top_k=10, top_p=1.0, min_p=0.0, repetition_penalty=1.0, penalty_last_n=64),
    dict(temperature=1.0, top_k=0, top_p=0.6, min_p=0.0, repetition_penalty=1.0, penalty_last_n=64),
    dict(temperature=2.0, top_k=0, top_p=0.5, min_p=0.0, repetition_penalty=1.0, penalty_last_n=64),
    dict(temperature=0.5, top_k=0, top_p=1.0, min_p=0.1, repetition_penalty=1.0, penalty_last_n=64),
    dict(temperature=0.8, top_k=40, top_p=0.95, min_p=0.05, repetition_penalty=1.3, penalty_last_n=4),
    dict(temperature=1.5, top_k=20, top_p=0.8, min_p=0.02, repetition_penalty=0.7, penalty_last_n=-1),
]


@pytest.mark.parametrize("cfg", CONFIGS, ids=[str(i) for i in range(len(CONFIGS))])
def test_distribution_matches_reference(tok, cfg):
    lg = make_logits(17, scale=1.5)
    history = [int(np.argmax(lg)), 5, 6, int(np.argsort(lg)[-3]), 12, 5]
    want = reference_probs(lg, history, **cfg)
    s = _core.Sampler(tok, seed=1234, **cfg)
    n = 20000
    got = draw(s, lg, history, n)
    support = set(np.nonzero(want)[0])
    assert set(np.nonzero(got)[0]) <= support
    assert {i for i in support if want[i] > 0.002} <= set(np.nonzero(got)[0])
    # binomial standard error, 5 sigma
    tol = 5 * np.sqrt(want * (1 - want) / n) + 1e-3
    assert np.all(np.abs(got - want) <= tol), np.max(np.abs(got - want) - tol)


def test_order_is_temperature_before_top_p(tok):
    # HF order (temperature, then top-p) and llama.cpp's (top-p on untempered probabilities) differ here
    lg = np.full(N_LOGITS, -30.0, dtype=np.float32)
    lg[[1, 2, 3]] = [3.0, 2.0, 1.0]
    cfg = dict(temperature=3.0, top_k=0, top_p=0.5, min_p=0.0, repetition_penalty=1.0, penalty_last_n=0)
    want = reference_probs(lg, [], **cfg)
    # untempered, id 1 holds 0.67 of the mass (top-p would keep it alone); tempered only 0.45
    assert want[2] > 0.3 and want[3] == 0
    got = draw(_core.Sampler(tok, seed=5, **cfg), lg, [], 4000)
    assert got[2] > 0.3 and got[1] > 0.4 and got[3] == 0


def test_repetition_penalty_values(tok):
    s = _core.Sampler(tok, temperature=0.0, repetition_penalty=1.5, penalty_last_n=3)
    lg = np.zeros(N_LOGITS, dtype=np.float32) - 5
    lg[[1, 2]] = [2.0, 1.5]
    assert s.sample(lg, []) == 1
    assert s.sample(lg, [1]) == 2          # 2.0 / 1.5 = 1.33 < 1.5
    assert s.sample(lg, [1, 9, 9, 9]) == 1  # id 1 is outside the last 3 entries
    lg[[1, 2]] = [-1.0, -1.2]
    assert s.sample(lg, [1, 1, 1]) == 2     # -1.0 * 1.5 = -1.5 < -1.2
    assert s.sample(lg, [1, 500, -3]) == 2  # ids outside the logits are ignored
    s0 = _core.Sampler(tok, temperature=0.0, repetition_penalty=1.5, penalty_last_n=0)
    assert s0.sample(lg, [1]) == 1          # penalty_last_n = 0: off


def test_seed_determinism(tok):
    lg = make_logits(4)
    cfg = dict(temperature=1.0, top_k=50, top_p=0.9, min_p=0.0)
    a = _core.Sampler(tok, seed=42, **cfg)
    b = _core.Sampler(tok, seed=42, **cfg)
    c = _core.Sampler(tok, seed=43, **cfg)
    sa = [a.sample(lg, []) for _ in range(200)]
    assert sa == [b.sample(lg, []) for _ in range(200)]
    assert sa != [c.sample(lg, []) for _ in range(200)]
    a.reseed(42)
    assert sa == [a.sample(lg, []) for _ in range(200)]
    # float64 input is converted, same result
    a.reseed(42)
    assert sa[:20] == [a.sample(lg.astype(np.float64), []) for _ in range(20)]


def test_bad_params(tok):
    for kw, word in [(dict(temperature=-0.1), "temperature"), (dict(temperature=math.nan), "temperature"),
                     (dict(temperature=math.inf), "temperature"), (dict(top_p=-0.5), "top_p"),
                     (dict(top_p=math.nan), "top_p"), (dict(min_p=1.5), "min_p"),
                     (dict(repetition_penalty=0.0), "repetition_penalty"),
                     (dict(repetition_penalty=-1.0), "repetition_penalty"),
                     (dict(penalty_last_n=-2), "penalty_last_n")]:
        with pytest.raises(ValueError, match=word):
            _core.Sampler(tok, **kw)
    s = _core.Sampler(tok)
    with pytest.raises(ValueError, match="1-D"):
        s.sample(np.zeros((2, 3), dtype=np.float32), [])
    with pytest.raises(ValueError, match="0 logits"):
        s.sample(np.zeros(0, dtype=np.float32), [])
    with pytest.raises(TypeError):
        _core.Sampler(tok, seed=-1)
