"""Serving throughput: ``python -m jaxtrans.serve`` with concurrent clients against one client at a time and
against jaxtrans' own batched ``generate`` on the same prompts (CPU, fp32), all in one run.

    python bench/serve.py [--model embedded:smollm2] [--adapter DIR] [--clients 8] [--new 64] [--plain]

The same ``--clients`` chat prompts go (1) one after another through the server, (2) all at once through it (they
share batches), and (3) straight into ``generate`` as one batch in-process, the floor for the server's work. Printed:
completion tokens per second of each, the ratios, and the batches the server formed. Only loopback is used; the
server process is bounded in time and killed at the end.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.decode import PROMPTS  # noqa: E402

THAI = ["ประเทศไทยมีกี่จังหวัด", "ขอสูตรต้มยำกุ้งหน่อย", "ทำไมท้องฟ้าเป็นสีฟ้า", "แนะนำที่เที่ยวในเชียงใหม่"]


def _post(url: str, name: str, content: str, new: int) -> int:
    import requests

    body = {"model": name, "messages": [{"role": "user", "content": content}], "max_tokens": new, "temperature": 0}
    r = requests.post(f"{url}/v1/chat/completions", json=body, timeout=900)
    r.raise_for_status()
    return r.json()["usage"]["completion_tokens"]


def _in_process(model: str, adapter: str | None, prompts: list[str], new: int) -> tuple[int, float]:
    """Tokens and seconds of one batched ``generate`` over the prompts (compiled first)."""
    from jaxtrans.data.template import chat_ids
    from jaxtrans.infer.generate import SamplingConfig, generate
    from jaxtrans.view import load_view

    view, _ = load_view(model, adapter)
    ids, stops = chat_ids(view.tokenizer, prompts)
    run = lambda: generate(view.cfg, view.variables, ids, SamplingConfig(new), stops, adapters=view.adapters)  # noqa: E731
    run()
    t0 = time.perf_counter()
    out = run()
    return sum(len(o) for o in out), time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="embedded:smollm2")
    ap.add_argument("--adapter", default=None)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--new", type=int, default=64)
    ap.add_argument("--plain", action="store_true", help="serve without TCOT (then the prompts are English)")
    args = ap.parse_args()
    import requests

    from tests.serving import free_port

    prompts = [(PROMPTS if args.plain else THAI)[i % (len(PROMPTS) if args.plain else len(THAI))] + " " * (i // 8)
               for i in range(args.clients)]  # fmt: skip
    port = free_port()
    cmd = [sys.executable, "-m", "jaxtrans.serve", "--model", args.model, "--port", str(port),
           "--max_batch", str(args.clients), *(["--adapter", args.adapter] if args.adapter else []),
           *(["--plain"] if args.plain else [])]  # fmt: skip
    server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 600
        while True:
            assert server.poll() is None and time.monotonic() < deadline, "the server did not start"
            try:
                name = requests.get(f"{url}/health", timeout=2).json()["model"]
                break
            except requests.ConnectionError:
                time.sleep(1)
        with concurrent.futures.ThreadPoolExecutor(args.clients) as pool:  # compile every shape once
            list(pool.map(lambda p: _post(url, name, p, args.new), prompts))
        for p in prompts:
            _post(url, name, p, args.new)
        t0 = time.perf_counter()
        one_by_one = sum(_post(url, name, p, args.new) for p in prompts)
        t_one = time.perf_counter() - t0
        t0 = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(args.clients) as pool:
            together = sum(pool.map(lambda p: _post(url, name, p, args.new), prompts))
        t_together = time.perf_counter() - t0
        health = requests.get(f"{url}/health", timeout=10).json()
    finally:
        server.terminate()
        server.wait(timeout=60)
    tokens, t_gen = _in_process(args.model, args.adapter, prompts, args.new) if args.plain else (0, 0.0)
    print(f"{args.clients} clients, up to {args.new} new tokens each, {'plain' if args.plain else 'TCOT'}")
    print(f"one at a time : {one_by_one} tokens in {t_one:.2f} s = {one_by_one / t_one:.1f} tok/s")
    print(f"all at once   : {together} tokens in {t_together:.2f} s = {together / t_together:.1f} tok/s "
          f"(x{(together / t_together) / (one_by_one / t_one):.2f} of one at a time)")  # fmt: skip
    if args.plain:
        print(f"generate()    : {tokens} tokens in {t_gen:.2f} s = {tokens / t_gen:.1f} tok/s in-process "
              f"(the server at x{(together / t_together) / (tokens / t_gen):.2f} of it)")  # fmt: skip
    print(f"server: {health['batches']} batches, largest {health['largest_batch']}, rows {health['rows']}")


if __name__ == "__main__":
    main()
