"""`tinygptv eval` (the paper's benchmarks) and `tinygptv batch` (questions about many images)."""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Dict, List, Optional


def _model_path(path: Optional[str]) -> str:
    from .cli import CLIError
    if path is None:
        from .demo import DEMO_MODEL
        if not DEMO_MODEL.is_file():
            raise CLIError(f"the embedded demo model is missing from this installation ({DEMO_MODEL}); pass -m")
        print(f"no -m given: using the embedded demo model ({DEMO_MODEL.name})", file=sys.stderr)
        return str(DEMO_MODEL)
    if not os.path.isfile(path):
        raise CLIError(f"model file not found: '{path}'")
    return path


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("-m", "--model", help="GGUF model file (default: the embedded demo model)")
    p.add_argument("-t", "--threads", type=int, default=None,
                   help="CPU threads (default: all available; with --ray: per actor, default 1)")
    p.add_argument("-c", "--ctx-size", type=int, default=2048, help="context size of each sequence (default 2048)")
    p.add_argument("-np", "--parallel", type=int, default=4, dest="parallel",
                   help="items decoded together: sequences of the model's context and worker threads (default 4)")
    from .gpu import add_device_args
    add_device_args(p)
    p.add_argument("--overwrite", action="store_true", help="start again instead of resuming the output")
    p.add_argument("--progress", choices=("auto", "on", "off"), default="auto",
                   help="progress bar on stderr (auto: when stderr is a terminal)")
    p.add_argument("--verbose", "-v", action="store_true", default=argparse.SUPPRESS, help="show tracebacks")
    g = p.add_argument_group("scale-out on Ray (pip install \"tinygptv-native[ray]\")")
    g.add_argument("--ray", action="store_true", help="run as a Ray Data pipeline")
    g.add_argument("--ray-address", default=None,
                   help="a Ray cluster to join ('auto', or ray://HOST:10001); default: start a local instance")
    g.add_argument("--ray-actors", type=int, default=2, help="model actors (each loads the model once; default 2)")
    g.add_argument("--ray-batch-size", type=int, default=8, help="items per block sent to an actor (default 8)")


def _check(args: argparse.Namespace) -> None:
    from .cli import CLIError
    if args.threads is not None and not 1 <= args.threads <= 512:
        raise CLIError(f"--threads must be in [1, 512], got {args.threads}")
    if not 16 <= args.ctx_size <= 1 << 20:
        raise CLIError(f"--ctx-size must be in [16, 1048576], got {args.ctx_size}")
    if not 1 <= args.parallel <= 256:
        raise CLIError(f"--parallel must be in [1, 256], got {args.parallel}")
    if args.ray_actors < 1 or args.ray_batch_size < 1:
        raise CLIError("--ray-actors and --ray-batch-size must be >= 1")
    if args.ray_address and not args.ray:
        args.ray = True


def _progress(args: argparse.Namespace, total: int, done: int, desc: str):
    from .batch import Progress
    enabled = {"on": True, "off": False}.get(args.progress)
    return Progress(total, done=done, desc=desc, enabled=enabled)


def _execute(args: argparse.Namespace, spec: dict, items: List[dict], writer, progress) -> List[dict]:
    """Answers the items here (one model, n_parallel threads) or on Ray."""
    from .batch import item_function, load_job_model, run_items
    if not items:
        return []
    if args.ray:
        from .ray_runner import run_ray
        return run_ray(spec, items, writer, address=args.ray_address, actors=args.ray_actors,
                       batch_size=args.ray_batch_size, progress=progress)
    model = load_job_model(spec)
    try:
        return run_items(items, item_function(model, spec), writer, workers=spec["n_parallel"], progress=progress)
    finally:
        model.close()


def _threads(args: argparse.Namespace) -> Optional[int]:
    return args.threads if args.threads is not None or not args.ray else 1


# ---- eval ---------------------------------------------------------------------------------------

def _eval(args: argparse.Namespace) -> int:
    from .batch import OrderedWriter, job_spec, read_records
    from .cli import CLIError
    from .evaluation import TASKS, DataError, format_summary, load_items, select, summarize
    _check(args)
    tasks = [t.strip() for t in args.task.split(",") if t.strip()]
    bad = [t for t in tasks if t not in TASKS]
    if bad or not tasks:
        raise CLIError(f"unknown task {', '.join(bad) or repr(args.task)}; expected one or more of {', '.join(TASKS)}")
    if len(tasks) > 1 and (args.annotations or args.images):
        raise CLIError("--annotations / --images name one task's files: give one --task")
    if args.limit is not None and args.limit < 0:
        raise CLIError(f"--limit must be >= 0, got {args.limit}")
    path = _model_path(args.model)
    os.makedirs(args.output_dir, exist_ok=True)
    summaries = []
    for task in tasks:
        try:
            items = select(load_items(task, args.data, args.annotations, args.images), args.limit, args.seed)
        except DataError as e:
            raise CLIError(str(e)) from None
        out = os.path.join(args.output_dir, f"{task}.jsonl")
        if args.overwrite and os.path.exists(out):
            os.remove(out)
        done: Dict[str, dict] = {}
        for r in read_records(out):
            done[str(r.get("id"))] = r
        todo = [it for it in items if it["id"] not in done]
        if done and todo:
            print(f"{task}: {len(items) - len(todo)} of {len(items)} items already in {out}, resuming", file=sys.stderr)
        spec = job_spec("eval", path, task=task, n_threads=_threads(args), n_ctx=args.ctx_size,
                        n_parallel=args.parallel, seed=args.seed, max_new_tokens=args.max_new_tokens,
                        device=args.device, gpu=args.gpu, gpu_layers=args.gpu_layers)
        writer = OrderedWriter(out, len(todo))
        prog = _progress(args, len(items), len(items) - len(todo), f"{task} ")
        try:
            for r in _execute(args, spec, todo, writer, prog):
                done[str(r["id"])] = r
        finally:
            writer.close()
            prog.close()
        recs = [done[it["id"]] for it in items]
        summaries.append(summarize(task, recs))
    with open(os.path.join(args.output_dir, "summary.json"), "w", encoding="utf-8") as f:
        json.dump(summaries, f, indent=1)
    print(format_summary(summaries))
    return 0


# ---- batch --------------------------------------------------------------------------------------

def _batch(args: argparse.Namespace) -> int:
    from .batch import BatchSettings, OrderedWriter, job_spec, read_batch_input, resume_batch
    from .cli import CLIError
    _check(args)
    try:
        items, base = read_batch_input(args.input, args.question)
    except (ValueError, FileNotFoundError) as e:
        raise CLIError(str(e)) from None
    path = _model_path(args.model)
    try:
        n_done = resume_batch(args.output, items, args.overwrite)
    except ValueError as e:
        raise CLIError(str(e)) from None
    if n_done:
        print(f"{n_done} of {len(items)} items already in {args.output}, resuming", file=sys.stderr)
    extra = {k: getattr(args, k) for k in ("top_p", "top_k", "repetition_penalty") if getattr(args, k) is not None}
    settings = BatchSettings(base_dir=base, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                             seed=args.seed, system=args.system, extra=extra)
    spec = job_spec("batch", path, n_threads=_threads(args), n_ctx=args.ctx_size, n_parallel=args.parallel,
                    seed=args.seed, settings=settings, device=args.device, gpu=args.gpu,
                    gpu_layers=args.gpu_layers)
    todo = items[n_done:]
    writer = OrderedWriter(args.output, len(todo))
    prog = _progress(args, len(items), n_done, "")
    try:
        recs = _execute(args, spec, todo, writer, prog)
    finally:
        writer.close()
        prog.close()
    errors = sum(1 for r in recs if "error" in r)
    print(f"{len(recs)} items answered ({errors} failed), {n_done} already done: {args.output}", file=sys.stderr)
    return 0


def add_commands(sub) -> None:
    from .evaluation import TASKS
    pe = sub.add_parser("eval", help="score a model on the paper's benchmarks (vsr, gqa, iconvqa, vizwiz, hm)",
                        description="Zero-shot scores on the TinyGPT-V paper's benchmarks, in the layout of its "
                                    "evaluation scripts. Writes OUTPUT_DIR/TASK.jsonl (one record per item, "
                                    "resumable) and OUTPUT_DIR/summary.json, and prints the table.")
    pe.add_argument("--task", required=True, help=f"one or more of {', '.join(TASKS)}, comma-separated")
    pe.add_argument("--data", required=True,
                    help="the evaluation data folder (holding gqa/, hateful_meme/, iconvqa/, vizwiz/, vsr/), or one "
                         "task's own folder")
    pe.add_argument("--annotations", default=None, help="the task's annotation file, if not at its usual place")
    pe.add_argument("--images", default=None, help="the task's image folder, if not at its usual place")
    pe.add_argument("-o", "--output-dir", default="eval_results", help="where the JSONL and summary go")
    pe.add_argument("--limit", type=int, default=None, help="only this many items (the first ones; with --seed "
                                                            "a seeded random choice)")
    pe.add_argument("--seed", type=int, default=None, help="seed of the --limit choice and of the model")
    pe.add_argument("-n", "--max-new-tokens", type=int, default=None, help="default 20, as the reference")
    _common(pe)
    pe.set_defaults(fn=_eval)

    pb = sub.add_parser("batch", help="answer questions about many images (JSONL, CSV or a folder) into a JSONL",
                        description="Answers items (fields 'image', a path relative to the input file, and "
                                    "'question'; other fields are kept) into a JSONL in input order, each with "
                                    "'answer' added (or 'error'). Resumes an interrupted output.")
    pb.add_argument("--input", "-i", required=True, help="items.jsonl, items.csv, or a folder of pictures")
    pb.add_argument("--output", "-o", required=True, help="the JSONL to write")
    pb.add_argument("--question", "-q", default=None, help="the question for a folder (or items without one)")
    pb.add_argument("--system", default=None, help="replace the model's system text")
    g = pb.add_argument_group("generation (default: greedy, the model's max_new_tokens)")
    g.add_argument("-n", "--max-new-tokens", type=int, default=None)
    g.add_argument("--temp", type=float, default=0.0, dest="temperature", help="temperature (default 0: greedy)")
    g.add_argument("--top-p", type=float, default=None, dest="top_p")
    g.add_argument("--top-k", type=int, default=None, dest="top_k")
    g.add_argument("--repeat-penalty", type=float, default=None, dest="repetition_penalty")
    g.add_argument("--seed", type=int, default=None)
    _common(pb)
    pb.set_defaults(fn=_batch)
