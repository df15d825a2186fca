"""`tinygptv run`, `tinygptv chat` and `tinygptv bench`."""
from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any, Dict, Optional

from .term import Term, install_log_handler, stats_lines

_CTRL = {c: "\ufffd" for c in list(range(0, 9)) + list(range(11, 32)) + [127] if c not in (10, 13)}


def printable(s: str) -> str:
    """Text for a terminal: control characters (other than tab and newline) become U+FFFD."""
    return s.translate(_CTRL)


def _common(p: argparse.ArgumentParser, sampling: bool = True) -> None:
    p.add_argument("-m", "--model", help="GGUF model file (default: the embedded demo model)")
    p.add_argument("-t", "--threads", type=int, default=None, help="CPU threads (default: all available)")
    p.add_argument("-c", "--ctx-size", type=int, default=None, help="context size in positions (default 2048)")
    from .gpu import add_device_args
    add_device_args(p)
    p.add_argument("--verbose", "-v", action="store_true", default=argparse.SUPPRESS,
                   help="show timings, log lines and tracebacks")
    if sampling:
        g = p.add_argument_group("sampling (defaults: the model's own settings)")
        g.add_argument("-n", "--n-predict", type=int, default=None, dest="max_new_tokens",
                       help="most tokens to generate")
        g.add_argument("--temp", type=float, default=None, dest="temperature", help="temperature (0 = greedy)")
        g.add_argument("--top-p", type=float, default=None, dest="top_p",
                       help="keep the most probable tokens up to this total probability (1 = off)")
        g.add_argument("--top-k", type=int, default=None, dest="top_k",
                       help="keep the K most probable tokens (0 = no limit)")
        g.add_argument("--min-p", type=float, default=None, dest="min_p",
                       help="drop tokens less probable than this fraction of the most probable (0 = off)")
        g.add_argument("--repeat-penalty", type=float, default=None, dest="repetition_penalty",
                       help="penalty of tokens already in the answer (1 = off)")
        g.add_argument("--seed", type=int, default=None,
                       help="random seed, for repeatable answers (default -1: a new random seed each time)")
        g.add_argument("--ignore-eos", action="store_true", default=None,
                       help="generate -n tokens: ignore end-of-text and the model's stop strings")


def check_seed(seed: Optional[int], what: str = "--seed") -> Optional[int]:
    """A seed for the sampler: None (a random one) for -1."""
    from .cli import CLIError
    if seed is None or seed == -1:
        return None
    if not 0 <= seed < 1 << 64:
        raise CLIError(f"{what} must be in [0, 2^64), or -1 for a random seed, got {seed}")
    return seed


def _sampling(args: argparse.Namespace) -> Dict[str, Any]:
    from .cli import CLIError
    if getattr(args, "top_k", None) is not None and args.top_k < 0:
        raise CLIError(f"--top-k must be >= 0 (0 = no limit), got {args.top_k}")
    if getattr(args, "seed", None) is not None:
        args.seed = check_seed(args.seed)
    return {k: getattr(args, k) for k in ("max_new_tokens", "temperature", "top_p", "top_k", "min_p",
                                          "repetition_penalty", "seed", "ignore_eos") if getattr(args, k, None) is not None}


def load_model(args: argparse.Namespace, term: Optional[Term] = None, demo_picture: bool = True):
    """The Model named by -m (or the demo model, saying so on stderr, with its example picture as --image
    when `demo_picture` and no --image was given), with -t/-c checked first."""
    from .cli import CLIError, check_file
    from .model import Model
    term = term or Term()
    if args.threads is not None and not 1 <= args.threads <= 512:
        raise CLIError(f"--threads must be in [1, 512], got {args.threads}")
    if args.ctx_size is not None and not 16 <= args.ctx_size <= 1 << 20:
        raise CLIError(f"--ctx-size must be in [16, 1048576], got {args.ctx_size}")
    path = args.model
    if path is None:
        from .demo import DEMO_IMAGE, DEMO_MODEL
        use_picture = demo_picture and hasattr(args, "image") and args.image is None and DEMO_IMAGE.is_file()
        term.note(f"no -m given: using the embedded demo model ({DEMO_MODEL.name})"
                  + (f" and its example picture ({DEMO_IMAGE.name})" if use_picture else ""))
        if not DEMO_MODEL.is_file():
            raise CLIError(f"the embedded demo model is missing from this installation ({DEMO_MODEL}); "
                           f"pass a model with -m")
        if use_picture:
            args.image = str(DEMO_IMAGE)
        path = str(DEMO_MODEL)
    else:
        check_file(path, "model file")
    with term.status(f"loading {os.path.basename(path)}"):
        return Model(path, n_threads=args.threads, n_ctx=args.ctx_size, verbose=bool(getattr(args, "verbose", False)),
                     device=args.device, gpu=args.gpu, gpu_layers=args.gpu_layers)


def _check_image(path: Optional[str]) -> None:
    from .cli import check_file
    if path is not None:
        check_file(path, "image file")


def _setup_term(args: argparse.Namespace) -> Term:
    """The terminal of a command that loads a model, its log lines routed through it."""
    term = Term()
    install_log_handler(term)
    return term


def prompt_status(stream) -> str:
    """The status line while the prompt is evaluated (with its progress when it takes a while)."""
    done, total = stream.prompt_progress
    return f"processing the prompt: {done}/{total} positions" if total >= 1024 else "processing the prompt"


def stream_answer(term: Term, chat, prompt: str, image, sampling: Dict[str, Any], tty: bool):
    """Asks `chat` and writes the answer to term.out as it comes, with a status line until the first
    piece (encoding the image, evaluating the prompt). Returns the stream (its .result is complete)
    or raises what ask() raised; KeyboardInterrupt stops the answer (kept as "interrupted") and
    propagates."""
    status = term.status("encoding the image" if image is not None else "processing the prompt").start()
    try:
        stream = chat.ask(prompt, image=image, stream=True, **sampling)
        write_stream(term, stream, status, tty)
        return stream
    finally:
        status.stop()


def write_stream(term: Term, stream, status, tty: bool) -> None:
    """Writes a ChatStream's pieces to term.out; `status` shows the prompt's progress until the first."""
    status.set(lambda: prompt_status(stream))
    try:
        for piece in stream:
            status.stop()
            term.write(printable(piece) if tty else piece)
    except KeyboardInterrupt:
        stream.close()
        raise


def context_full(model, chat, result) -> bool:
    """Whether an answer stopped because the context was full (not at max_new_tokens)."""
    return result.finish_reason == "length" and chat.prompt_positions + result.completion_tokens >= model.n_ctx


def _read_prompt(arg: str) -> str:
    from .cli import CLIError, check_text
    if arg != "-":
        return check_text(arg, "the prompt (-p)")
    data = sys.stdin.buffer.read() if hasattr(sys.stdin, "buffer") else sys.stdin.read().encode("utf-8", "surrogateescape")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise CLIError(f"the prompt read from stdin is not valid UTF-8 text (byte 0x{data[e.start]:02x} at "
                       f"offset {e.start})") from None


def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.realpath(a) == os.path.realpath(b)


def _run(args: argparse.Namespace) -> int:
    from .cli import CLIError
    term = _setup_term(args)
    _check_image(args.image)
    prompt = _read_prompt(args.prompt)
    sampling = _sampling(args)
    m = load_model(args, term)
    if args.draw and args.image is None:
        raise CLIError("--draw needs an --image to draw on")
    if args.draw and _same_file(args.draw, args.image):
        raise CLIError(f"--draw {args.draw} would overwrite the input image; give another file name")
    if args.image is not None and not m.has_vision:
        raise CLIError(f"this model ({m.arch}) has no vision encoder, so it cannot take --image")
    chat = m.new_chat()
    try:
        stream = stream_answer(term, chat, prompt, args.image, sampling, sys.stdout.isatty())
    except KeyboardInterrupt:
        term.end_line()
        raise
    term.write("\n")
    res = stream.result
    if context_full(m, chat, res):
        term.note(f"(the answer reached the end of the context, {m.n_ctx} positions: -c sets a larger one)", "dim")
    if getattr(args, "verbose", False):
        term.note(stats_lines(res), "dim")
    if args.draw:
        from .grounding import draw_boxes, parse_boxes
        from .image import load_image
        im = load_image(args.image)
        boxes = parse_boxes(res.text, im.size)
        draw_boxes(im, boxes, out=args.draw)
        print(f"drew {len(boxes)} box{'es' if len(boxes) != 1 else ''} to {args.draw}", file=sys.stderr)
    return 0


def _chat(args: argparse.Namespace) -> int:
    from .cli import CLIError, check_text
    from .repl import Repl
    term = _setup_term(args)
    _check_image(args.image)
    if args.system is not None:
        check_text(args.system, "--system")
    sampling = _sampling(args)
    m = load_model(args, term)
    if args.image is not None and not m.has_vision:
        raise CLIError(f"this model ({m.arch}) has no vision encoder, so it cannot take --image")
    return Repl(m, image=args.image, system=args.system, sampling=sampling,
                verbose=bool(getattr(args, "verbose", False)), term=term).run()


def _bench(args: argparse.Namespace) -> int:
    import numpy as np

    from . import _core
    from .cli import CLIError
    from .engine import SamplingParams
    if args.prompt_tokens < 1 or args.gen_tokens < 1 or args.reps < 1:
        raise CLIError(f"-p, -n and --reps must be >= 1, got {args.prompt_tokens}, {args.gen_tokens}, {args.reps}")
    _check_image(args.image)
    needed = max(16, args.prompt_tokens + args.gen_tokens + 1)
    args.ctx_size = max(args.ctx_size or needed, needed)
    m = load_model(args, _setup_term(args), demo_picture=False)
    if args.image is not None and not m.has_vision:
        raise CLIError(f"this model ({m.arch}) has no vision encoder, so it cannot take --image")
    rng = np.random.default_rng(0)
    ids = rng.integers(0, min(m.n_vocab, 50000), args.prompt_tokens).astype(np.int32)
    enc, pp, tg = [], [], []
    pixels = None
    if m.has_vision:
        if args.image is not None:
            pixels = m.preprocess(args.image)
        else:
            s = m.image_size
            pixels = rng.standard_normal((3, s, s)).astype(np.float32)
    eng = m.engine
    for _ in range(args.reps):
        if pixels is not None:
            eng.ctx.clear_image_cache()  # time the encoder, not the cache
            t0 = time.perf_counter()
            eng.ctx.encode_image(pixels)
            enc.append((time.perf_counter() - t0) * 1e3)
        seq = eng.reserve()
        try:
            eng.ctx.clear(seq)
            b = _core.Batch()
            for i, t in enumerate(ids):
                b.add_token(int(t), seq, i, i == len(ids) - 1)
            t0 = time.perf_counter()
            eng.ctx.decode(b)
            pp.append(args.prompt_tokens / (time.perf_counter() - t0))
            eng.ctx.clear(seq)
        finally:
            eng.release(seq)
        # generation: the first token comes with the one-token prompt, the rest are timed decode steps
        req = eng.submit([[int(ids[0])]], SamplingParams(temperature=0.0), args.gen_tokens + 1, use_eos=False)
        for _ in req.events():
            pass
        tg.append(args.gen_tokens / (req.generation_ms / 1e3))
    med = lambda a: float(np.median(a)) if a else float("nan")  # noqa: E731
    name = os.path.basename(m.path)
    print(f"model: {name} ({m.arch}, {m._model.file_size / 1e6:.1f} MB), threads: {m.n_threads}, "
          f"reps: {args.reps} (median)")
    print(f"| {'test':<22} | {'value':>12} |")
    print(f"|{'-' * 24}|{'-' * 14}|")
    if pixels is not None:
        print(f"| {'image encode (ms)':<22} | {med(enc):>12.2f} |")
    print(f"| {f'pp{args.prompt_tokens} (tokens/s)':<22} | {med(pp):>12.2f} |")
    print(f"| {f'tg{args.gen_tokens} (tokens/s)':<22} | {med(tg):>12.2f} |")
    return 0


def add_commands(sub: "argparse._SubParsersAction") -> None:
    pr = sub.add_parser("run", help="answer one question about an image, streamed to stdout")
    _common(pr)
    pr.add_argument("--image", help="image file (PNG, JPEG, WebP, BMP, GIF, TIFF)")
    pr.add_argument("-p", "--prompt", required=True, help="the question ('-' reads it from stdin); task tags such "
                    "as [vqa], [caption], [grounding], [refer] pass through")
    pr.add_argument("--draw", metavar="OUT.png", help="draw the answer's grounding boxes on the image into OUT.png")
    pr.set_defaults(fn=_run)

    pc = sub.add_parser("chat", help="interactive chat in the terminal (/help inside for commands)")
    _common(pc)
    pc.add_argument("--image", help="image to talk about (also /image PATH inside the chat)")
    pc.add_argument("--system", default=None, help="replace the model's system text")
    pc.set_defaults(fn=_chat)

    pb = sub.add_parser("bench", help="image encode ms, prompt and generation tokens/s on this machine")
    _common(pb, sampling=False)
    pb.add_argument("-p", "--prompt-tokens", type=int, default=128, help="prompt length (default 128)")
    pb.add_argument("-n", "--gen-tokens", type=int, default=64, help="tokens to generate (default 64)")
    pb.add_argument("--reps", type=int, default=3, help="repetitions, the median is shown (default 3)")
    pb.add_argument("--image", help="image to encode (default: random pixels; the time does not depend on them)")
    pb.set_defaults(fn=_bench)
