"""`tinygptv serve` under concurrent clients, against llama-cpp-python's own server on the same file.

    python benchmarks/bench_server.py --target phi2-q4_0 [--clients 1,4,8] [--requests 4] [--max-tokens 64]
                                      [--threads 2] [--parallel 8] [--llama-python PY] [--no-llama] [--json OUT]
    python benchmarks/bench_server.py --target tinygptv-q4_0      # the real-size TinyGPT-V with an image
    python benchmarks/bench_server.py --target demo --no-llama    # the embedded demo model (a quick check)
    python benchmarks/bench_server.py --target phi2-tiny          # a small random Phi-2 (a quick check of both)

Targets: ``phi2-q4_0`` is benchmarks/bench_phi2.py's random-weight Phi-2 of the real size (2.78 B) in
Q4_0; ``tinygptv-q4_0`` is benchmarks/bench_tinygptv.py's random-weight TinyGPT-V (224 px) in Q4_0, asked
about a picture (llama.cpp cannot load it, so only our server runs); ``demo`` the embedded demo model
and its picture; ``phi2-tiny`` a 4-layer random Phi-2; or the path of a GGUF file. Files are built
and cached under .bench/.

Each server runs in its own process, one after the other, with the same threads (--threads) and
context: ours as ``tinygptv serve --parallel N``, llama.cpp's as ``python -m llama_cpp.server`` (its
``[server]`` extra, requests queued rather than interrupting the one being answered) from the
interpreter given by --llama-python. For each number of clients, that
many threads each send --requests streamed requests in turn with the official ``openai`` client
(temperature 0, --max-tokens each; text targets through /v1/completions, the TinyGPT-V target
through /v1/chat/completions with the picture as a data URL); prompts share an instruction and
differ in their tail. Reported: aggregate generated tokens/s (all tokens over the wall time of the
run) and p50/p95 time to first token. Goal: at 4 clients at least 3x llama.cpp's aggregate
throughput, at 1 client no slower.
"""
from __future__ import annotations

import argparse
import base64
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / ".bench"
sys.path.insert(0, str(Path(__file__).resolve().parent))

WORDS = ("alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet", "kilo", "lima")


def phi2_file(size: str) -> Path:
    """A random Phi-2 in Q4_0 with a byte-level vocabulary (bench_phi2's builder): "real" dimensions
    (2.78 B) or "tiny" (4 layers of 256)."""
    out = CACHE / f"phi2-serve-{size}-q4_0.gguf"
    if out.exists():
        return out
    import bench_phi2
    CACHE.mkdir(exist_ok=True)
    f16 = CACHE / f"phi2-serve-{size}-f16.gguf"
    print(f"building {out} ...", flush=True)
    bench_phi2.build_f16(f16, dict(embd=256, ff=1024, layers=4, heads=4) if size == "tiny" else None)
    from tinygptv_native.quantize import quantize_file
    quantize_file(str(f16), str(out), "q4_0")
    f16.unlink()
    return out


def target_file(target: str):
    """(model path or None for the demo model, picture path or None, llama.cpp can load it)."""
    if target == "demo":
        from tinygptv_native.demo import demo_image_path
        return None, str(demo_image_path()), False
    if target in ("phi2-tiny", "phi2-q4_0"):
        return str(phi2_file("tiny" if target == "phi2-tiny" else "real")), None, True
    if target == "tinygptv-q4_0":
        import bench_tinygptv
        from PIL import Image
        pic = CACHE / "bench-server-picture.png"
        if not pic.exists():
            import numpy as np
            Image.fromarray(np.random.default_rng(0).integers(0, 256, (224, 224, 3), dtype=np.uint8)).save(pic)
        return str(bench_tinygptv.model_file(224, "q4_0", False)), str(pic), False
    if Path(target).is_file():
        from tinygptv_native import _core
        arch = _core.GGUFReader(target).metadata().get("general.architecture")
        return target, None, arch == "phi2"
    raise SystemExit(f"unknown target {target!r} (phi2-q4_0, tinygptv-q4_0, demo, phi2-tiny or a GGUF file)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, proc: subprocess.Popen, what: str, timeout: float = 600) -> None:
    import httpx
    t0 = time.time()
    while time.time() - t0 < timeout:
        if proc.poll() is not None:
            raise SystemExit(f"{what} exited with status {proc.returncode}")
        try:
            r = httpx.get(url + "/v1/models", timeout=2)
            if r.status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"{what} did not start within {timeout:.0f} s")


def start_ours(path, args, port):
    cmd = [sys.executable, "-m", "tinygptv_native", "serve", "--port", str(port), "-t", str(args.threads),
           "--parallel", str(args.parallel), "-c", str(args.ctx), "--max-queue", "256"]
    if path:
        cmd += ["-m", path]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=str(ROOT))


def start_llama(path, args, port):
    cmd = [args.llama_python, "-m", "llama_cpp.server", "--model", path, "--host", "127.0.0.1", "--port", str(port),
           "--n_threads", str(args.threads), "--n_threads_batch", str(args.threads), "--n_ctx", str(args.ctx),
           "--interrupt_requests", "False"]  # queue requests rather than cut the stream being answered
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def one_request(client, kind, prompt, picture_url, max_tokens):
    """(time to first token s, tokens) of one streamed request."""
    t0 = time.perf_counter()
    first = None
    n = 0
    usage = None
    if kind == "chat":
        stream = client.chat.completions.create(
            model="m", stream=True, temperature=0, max_tokens=max_tokens, stream_options={"include_usage": True},
            messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": picture_url}},
                                                   {"type": "text", "text": prompt}]}])
        for ch in stream:
            if ch.choices and ch.choices[0].delta.content:
                first = first or time.perf_counter()
                n += 1
            if getattr(ch, "usage", None):
                usage = ch.usage
    else:
        stream = client.completions.create(model="m", prompt=prompt, stream=True, temperature=0,
                                           max_tokens=max_tokens)
        for ch in stream:
            if ch.choices and ch.choices[0].text:
                first = first or time.perf_counter()
                n += 1
            if getattr(ch, "usage", None):
                usage = ch.usage
    tokens = usage.completion_tokens if usage is not None else n
    return (first or time.perf_counter()) - t0, tokens


def run_load(url, clients, requests, kind, picture_url, max_tokens):
    import openai
    ttfts, tokens, errors = [], [], []
    lock = threading.Lock()

    def client_loop(i):
        c = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=3600)
        for k in range(requests):
            prompt = (("Describe what you see." if kind == "chat" else "Instruct: write a story about ")
                      + " ".join(WORDS[(i * 5 + k * 3 + j) % len(WORDS)] for j in range(6)))
            try:
                t, n = one_request(c, kind, prompt, picture_url, max_tokens)
            except Exception as e:  # noqa: BLE001 - counted and shown
                with lock:
                    errors.append(f"{type(e).__name__}: {e}")
                continue
            with lock:
                ttfts.append(t)
                tokens.append(n)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client_loop, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    q = statistics.quantiles(ttfts, n=20, method="inclusive") if len(ttfts) > 1 else ttfts * 19
    return {"clients": clients, "requests": len(ttfts), "errors": errors[:3], "n_errors": len(errors),
            "tokens": sum(tokens), "wall_s": wall, "tok_s": sum(tokens) / wall if wall > 0 else 0.0,
            "ttft_p50_s": statistics.median(ttfts) if ttfts else float("nan"),
            "ttft_p95_s": q[18] if ttfts else float("nan")}


def bench_server(name, start, path, args, kind, picture_url):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = start(path, args, port)
    try:
        wait_ready(url, proc, name)
        run_load(url, 1, 1, kind, picture_url, min(8, args.max_tokens))  # warm-up: the file read through
        rows = []
        for c in args.clients:
            r = run_load(url, c, args.requests, kind, picture_url, args.max_tokens)
            r["server"] = name
            rows.append(r)
            print(f"  {name:10s} {c:2d} clients: {r['tok_s']:8.2f} tok/s aggregate, TTFT p50 {r['ttft_p50_s']:.3f} s "
                  f"p95 {r['ttft_p95_s']:.3f} s ({r['requests']} requests, {r['tokens']} tokens, "
                  f"{r['n_errors']} errors)", flush=True)
        return rows
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def has_llama_server(python: str) -> bool:
    r = subprocess.run([python, "-c", "import llama_cpp.server.app, uvicorn, fastapi"], capture_output=True)
    return r.returncode == 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--target", default="phi2-q4_0")
    ap.add_argument("--clients", default="1,4,8", type=lambda s: [int(x) for x in s.split(",")])
    ap.add_argument("--requests", type=int, default=4, help="requests per client (default 4)")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--parallel", type=int, default=8, help="our server's --parallel (default 8)")
    ap.add_argument("--ctx", type=int, default=2048)
    ap.add_argument("--llama-python", default=sys.executable,
                    help="a Python with llama-cpp-python[server] (default: this one)")
    ap.add_argument("--no-llama", action="store_true", help="measure our server only")
    ap.add_argument("--json", help="write the rows to this file")
    args = ap.parse_args()

    path, picture, llama_ok = target_file(args.target)
    kind = "chat" if picture else "text"
    picture_url = None
    if picture:
        picture_url = "data:image/png;base64," + base64.b64encode(Path(picture).read_bytes()).decode()
    print(f"target {args.target} ({path or 'embedded demo model'}), {kind} requests, {args.threads} threads, "
          f"clients {args.clients}, {args.requests} requests each, {args.max_tokens} tokens", flush=True)
    rows = bench_server("tinygptv", start_ours, path, args, kind, picture_url)
    if args.no_llama:
        pass
    elif not llama_ok:
        print("  (llama.cpp cannot load this file: our server only)")
    elif not has_llama_server(args.llama_python):
        print(f"  (no llama-cpp-python[server] in {args.llama_python}: pip install 'llama-cpp-python[server]')")
    else:
        rows += bench_server("llama.cpp", start_llama, path, args, kind, picture_url)

    print("\n| server | clients | aggregate tok/s | TTFT p50 s | TTFT p95 s |")
    print("|---|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['server']} | {r['clients']} | {r['tok_s']:.2f} | {r['ttft_p50_s']:.3f} | {r['ttft_p95_s']:.3f} |")
    ours = {r["clients"]: r for r in rows if r["server"] == "tinygptv"}
    theirs = {r["clients"]: r for r in rows if r["server"] == "llama.cpp"}
    for c in sorted(set(ours) & set(theirs)):
        ratio = ours[c]["tok_s"] / theirs[c]["tok_s"] if theirs[c]["tok_s"] else float("inf")
        goal = {1: 1.0, 4: 3.0}.get(c)
        note = f" (goal >= {goal:g}x: {'met' if ratio >= goal else 'NOT met'})" if goal else ""
        print(f"{c} clients: {ratio:.2f}x llama.cpp's aggregate throughput{note}")
    if args.json:
        Path(args.json).write_text(json.dumps({"target": args.target, "rows": rows}, indent=2))
    return 1 if any(r["n_errors"] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
