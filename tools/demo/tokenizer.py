"""Trains the demo model's SentencePiece vocabulary on the generated corpus (deterministic).

BPE (so a score-driven greedy merger, as llama.cpp's SentencePiece tokenizer, reproduces it),
byte fallback, identity normalisation, no dummy prefix and no whitespace folding: the text of each
prompt segment is encoded exactly as written, which is how the prompt is split around <ImageHere>.

    python tools/demo/tokenizer.py --out /work/demo_ckpt/phi2/tokenizer.model
"""
from __future__ import annotations

import argparse
import io
import os

import numpy as np
import sentencepiece as spm

from questions import END_SYM, QTYPES, all_phrasings, candidates, phrase, prompt_segments, turn_text
from shapes import sample_scene

VOCAB_SIZE = 768
# Always one piece each: the box syntax and the stop string.
USER_SYMBOLS = ["{<", "><", ">}", "###", "<p>", "</p>", "<delim>"]


def corpus_lines(n_scenes: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    lines = []
    for i in range(n_scenes):
        scene = sample_scene(rng)
        for t in QTYPES:
            for fields, a in candidates(scene, t):
                # every phrasing on the first scenes, one drawn at random afterwards
                for q in all_phrasings(t, fields) if i < 20 else [phrase(t, fields, rng)]:
                    before, after = prompt_segments(q)
                    lines += [before, after, turn_text(q), a + END_SYM]
    return lines


def train_tokenizer(out_path: str, n_scenes: int = 3000, seed: int = 1234) -> spm.SentencePieceProcessor:
    lines = corpus_lines(n_scenes, seed)
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_writer=model,
        model_type="bpe", vocab_size=VOCAB_SIZE, byte_fallback=True,
        character_coverage=1.0, normalization_rule_name="identity",
        add_dummy_prefix=False, remove_extra_whitespaces=False,
        split_digits=False, split_by_number=True, user_defined_symbols=USER_SYMBOLS, max_sentence_length=4096,
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
        num_threads=1, seed_sentencepiece_size=100000, shuffle_input_sentence=False,
        minloglevel=2)
    data = model.getvalue()
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    tmp = out_path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, out_path)
    return spm.SentencePieceProcessor(model_proto=data)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    sp = train_tokenizer(args.out)
    print(f"vocab {sp.get_piece_size()} -> {args.out}")


if __name__ == "__main__":
    main()
