"""The `tinygptv` command: run, chat, info, bench, serve, convert, quantize."""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional


class CLIError(Exception):
    """A user error: printed as one line, exit code 2."""


def _info(args: argparse.Namespace) -> int:
    from . import _core
    r = _core.GGUFReader(args.model)
    md = r.metadata(max_array=16)
    tensors = r.tensors()
    groups: dict = {}
    n_params = 0
    for name, typ, shape, _off, nbytes in tensors:
        g = name.split(".")[0] if not name.startswith("blk.") else "blk"
        if name.startswith(("v.", "qf.", "mm.")):
            g = name.split(".")[0]
        n = 1
        for d in shape:
            n *= d
        n_params += n
        groups.setdefault(g, {}).setdefault(typ, [0, 0])
        groups[g][typ][0] += n
        groups[g][typ][1] += nbytes
    arch = md.get("general.architecture", "?")
    print(f"file:          {args.model} ({r.file_size / 1e6:.1f} MB, GGUF v{r.version})")
    print(f"architecture:  {arch}" + (f", stage {md['tinygptv.stage']}" if "tinygptv.stage" in md else ""))
    print(f"parameters:    {n_params / 1e6:.2f} M in {len(tensors)} tensors")
    print("tensor groups:")
    names = {"blk": "decoder blocks", "token_embd": "token embedding", "output": "output (lm head)",
             "output_norm": "final norm", "v": "vision (EVA ViT)", "qf": "Q-Former", "mm": "projector"}
    for g, types in groups.items():
        desc = ", ".join(f"{t} {n / 1e6:.2f} M ({b / 1e6:.1f} MB)" for t, (n, b) in sorted(types.items()))
        print(f"  {names.get(g, g):18s} {desc}")
    print("metadata:")
    for k, v in md.items():
        if k.startswith("tokenizer.ggml.") and isinstance(v, list):
            continue
        s = repr(v)
        print(f"  {k} = {s if len(s) <= 120 else s[:117] + '...'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tinygptv", description="Run TinyGPT-V natively from a GGUF file.")
    p.add_argument("--verbose", action="store_true", help="show tracebacks and timings")
    sub = p.add_subparsers(dest="cmd", metavar="COMMAND")

    pi = sub.add_parser("info", help="show a model file's architecture, sizes, tensor types and metadata")
    pi.add_argument("model")
    pi.set_defaults(fn=_info)

    sub.add_parser("convert", help="convert published checkpoints to GGUF (see `tinygptv convert -h`)",
                   add_help=False)
    sub.add_parser("quantize", help="quantize a GGUF file: IN OUT TYPE (f16, q8_0, q4_0, q4_k_m)", add_help=False)
    try:
        from .cli_chat import add_commands
        add_commands(sub)
    except ImportError:
        pass
    from .server.main import add_command as add_serve  # the server's own packages load when it runs
    add_serve(sub)
    return p


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    verbose = "--verbose" in argv or "-v" in argv
    try:
        # convert and quantize own their argument parsing.
        rest = [a for a in argv if a not in ("--verbose", "-v")]
        if rest and rest[0] == "convert":
            try:
                from .convert.cli import main as convert_main
            except ImportError as e:
                raise CLIError(f"the converter needs extra packages: pip install 'tinygptv-native[convert]' ({e})")
            return convert_main(rest[1:]) or 0
        if rest and rest[0] == "quantize":
            from .quantize import main as quantize_main
            return quantize_main(rest[1:]) or 0
        parser = build_parser()
        args = parser.parse_args(argv)
        if not getattr(args, "fn", None):
            parser.print_help()
            return 2
        return args.fn(args) or 0
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (CLIError, ValueError, OSError, RuntimeError) as e:
        if verbose:
            raise
        print(f"tinygptv: error: {e}", file=sys.stderr)
        return 1
