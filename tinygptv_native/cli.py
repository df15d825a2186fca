"""The `tinygptv` command: run, chat, info, devices, bench, serve, convert, quantize."""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional


class CLIError(Exception):
    """A user error: printed as one line, exit code 2."""


def check_file(path: str, what: str) -> None:
    """A one-line CLIError unless `path` is a readable file."""
    import os
    if os.path.isdir(path):
        raise CLIError(f"{what} '{path}' is a directory, not a file")
    if not os.path.exists(path):
        raise CLIError(f"{what} not found: '{path}'")


def check_text(text: str, what: str) -> str:
    """`text` unless it holds bytes that were not UTF-8 (which Python keeps as lone surrogates)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        c = ord(text[e.start])
        byte = f"byte 0x{c - 0xDC00:02x}" if 0xDC80 <= c <= 0xDCFF else f"character U+{c:04X}"
        raise CLIError(f"{what} is not valid UTF-8 text ({byte} at character {e.start})") from None
    return text


def fmt_value(v) -> str:
    """A metadata or setting value for people: floats stored as float32 without their binary noise
    (0.9, not 0.8999999761581421), lists item by item."""
    if isinstance(v, float):
        import numpy as np
        f32 = np.float32(v)
        return str(f32) if float(f32) == v and np.isfinite(f32) else repr(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(fmt_value(x) for x in v) + "]"
    return repr(v)


def _info(args: argparse.Namespace) -> int:
    from . import _core
    if args.model is None:
        from .demo import DEMO_MODEL
        if not DEMO_MODEL.is_file():
            raise CLIError(f"the embedded demo model is missing from this installation ({DEMO_MODEL})")
        args.model = str(DEMO_MODEL)
        print("the embedded demo model: a tiny TinyGPT-V trained on pictures of coloured shapes "
              "(tinygptv run with no -m tries it)")
    check_file(args.model, "model file")
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
        s = fmt_value(v)
        print(f"  {k} = {s if len(s) <= 120 else s[:117] + '...'}")
    return 0


def _devices(args: argparse.Namespace) -> int:
    from .gpu import format_device, vulkan_devices
    devs = vulkan_devices()  # VulkanError (a RuntimeError: one line, exit 1) without a loader or a backend
    if not devs:
        print("no Vulkan devices were found")
        return 1
    for d in devs:
        print(format_device(d))
    return 0


def _version() -> str:
    from . import __version__
    return __version__


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tinygptv", description="Run TinyGPT-V natively from a GGUF file.")
    p.add_argument("--verbose", action="store_true", help="show tracebacks and timings")
    p.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = p.add_subparsers(dest="cmd", metavar="COMMAND")

    pi = sub.add_parser("info", help="show a model file's architecture, sizes, tensor types and metadata")
    pi.add_argument("model", nargs="?", help="GGUF file (default: the embedded demo model)")
    pi.set_defaults(fn=_info)

    pd = sub.add_parser("devices", help="list the Vulkan devices (GPUs) the GPU backend can use")
    pd.set_defaults(fn=_devices)

    sub.add_parser("convert", help="convert published checkpoints to GGUF (see `tinygptv convert -h`)",
                   add_help=False)
    sub.add_parser("quantize", help="quantize a GGUF file: IN OUT TYPE (f16, q8_0, q4_0, q4_k_m, q4_k_s, q4_1, q5_0, q5_1, q5_k_s, q5_k_m, q6_k, q2_k, q3_k_s, q3_k_m, q3_k_l, iq4_nl, iq4_xs)", add_help=False)
    try:
        from .cli_chat import add_commands
        add_commands(sub)
    except ImportError:
        pass
    from .cli_batch import add_commands as add_batch_commands
    add_batch_commands(sub)
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
    except BrokenPipeError:
        # the reader went away (`tinygptv info x | head`): stop quietly, as cat does
        import os
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        return 141
    except (CLIError, ValueError, OSError, RuntimeError) as e:
        if verbose:
            raise
        print(f"tinygptv: error: {e}", file=sys.stderr)
        return 1
