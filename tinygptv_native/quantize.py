"""`tinygptv quantize IN.gguf OUT.gguf TYPE`: rewrite a GGUF file with quantized weights.

TYPE is one of f16, q8_0, q4_0, q4_k_m, q4_k_s, q4_1, q5_0, q5_1, q5_k_s, q5_k_m, q6_k, q2_k, q3_k_s, q3_k_m,
q3_k_l, iq4_nl, iq4_xs (llama.cpp's mixes of those names); --vision-type f16|q8_0|q4_0 gives the image path's weights
(v.*, qf.*, mm.*) that type instead. The quantizer itself, with the rules for which tensor gets
which type, is the converter's (convert/quantize.py, installed as tinygptv_native.convert.quantize):
its names are re-exported here.
"""
from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from .convert.quantize import (FILE_TYPE, QUANTIZATION_VERSION, TYPES, VISION_TYPES,  # noqa: F401
                               QuantizeError, choose_type, quantize_file, use_more_bits)


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="tinygptv quantize",
                                 description="Rewrite a GGUF file with quantized weights (" + ", ".join(TYPES) + ").")
    ap.add_argument("input", help="input GGUF file")
    ap.add_argument("output", help="output GGUF file (written to a temporary name, then renamed)")
    ap.add_argument("type", help="one of: " + ", ".join(TYPES))
    ap.add_argument("--vision-type", default=None, metavar="TYPE",
                    help="type of the vision tower, Q-Former and projector weights: " + ", ".join(VISION_TYPES)
                    + " (default: TYPE for f16, q8_0, q4_0; Q8_0 for the other types)")
    ap.add_argument("--threads", type=int, default=None, help="worker threads (default: all cores)")
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    args = ap.parse_args(list(argv) if argv is not None else None)
    if args.type.lower() not in TYPES:
        ap.error(f"unknown TYPE {args.type!r} (expected one of {', '.join(TYPES)})")
    if args.vision_type is not None and args.vision_type.lower() not in VISION_TYPES:
        ap.error(f"unknown --vision-type {args.vision_type!r} (expected one of {', '.join(VISION_TYPES)})")
    if args.threads is not None and args.threads < 1:
        ap.error(f"--threads must be >= 1, got {args.threads}")
    try:
        types = quantize_file(args.input, args.output, args.type, progress=not args.quiet, n_threads=args.threads,
                              vision_type=args.vision_type)
    except (ValueError, OSError, ImportError) as e:
        print(f"tinygptv quantize: error: {e}", file=sys.stderr)
        return 1
    counts = {}
    for t in types.values():
        counts[t] = counts.get(t, 0) + 1
    if not args.quiet:
        summary = ", ".join(f"{n} {t}" for t, n in sorted(counts.items()))
        print(f"wrote {args.output} ({len(types)} tensors: {summary})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
