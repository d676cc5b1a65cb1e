"""``python -m jaxtrans.serve``: an OpenAI-compatible server for a transferred model, with a chat page.

    python -m jaxtrans.serve --model embedded:smollm2 --adapter runs/thai/export/peft
    python -m jaxtrans.serve --model runs/thai/export/merged --plain --port 8001 --api_key "$KEY"

Routes: ``POST /v1/chat/completions``, ``POST /v1/completions``, ``GET /v1/models``,
``GET /health``, and the chat page at ``/``. For TCOT models the answer's
``content`` is the target-language answer and ``reasoning_content`` the English
pivot; ``--plain`` serves ordinary chat models. With ``--api_key`` (or
``JAXTRANS_API_KEY``) the ``/v1`` routes need ``Authorization: Bearer KEY``.
The default address is loopback; bind another only behind your own access control.
"""

from __future__ import annotations

import argparse
import os
import socket

from jaxtrans.errors import JaxtransError, number
from jaxtrans.exits import guarded
from jaxtrans.serve.app import Options
from jaxtrans.serve.engine import CHUNK, MAX_BATCH, WINDOW_S
from jaxtrans.view import add_allow_other_base


def _args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m jaxtrans.serve", description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="embedded:smollm2", help="HF dir, .gguf, hub name or embedded:smollm2")
    ap.add_argument("--adapter", default=None, help="PEFT adapter directory (e.g. runs/thai/export/peft)")
    ap.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--api_key", default=os.environ.get("JAXTRANS_API_KEY"), help="require this bearer key on /v1")
    ap.add_argument("--served_name", default=None, help="the model id clients name (default: adapter or model)")
    ap.add_argument("--plain", action="store_true", help="no TCOT handling (ordinary chat models)")
    ap.add_argument("--max_batch", type=int, default=MAX_BATCH, help="requests decoded together")
    ap.add_argument("--max_queue", type=int, default=Options.max_queue, help="requests held at once; more get 503")
    ap.add_argument("--max_n", type=int, default=Options.max_n, help="the largest n a request may ask for")
    ap.add_argument("--max_tokens", type=int, default=Options.max_tokens, help="when a request gives no max_tokens")
    ap.add_argument("--temperature", type=float, default=Options.temperature, help="when a request gives none")
    ap.add_argument("--window_ms", type=float, default=WINDOW_S * 1000, help="how long a batch waits for more")
    ap.add_argument("--chunk", type=int, default=CHUNK, help="tokens decoded between two looks at the clients")
    ap.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    add_allow_other_base(ap)
    return ap.parse_args(argv)


def _check(args: argparse.Namespace) -> None:
    """Every bad value refused before the model is read."""
    for key in ("max_batch", "max_queue", "max_n", "max_tokens", "chunk"):
        number(f"--{key}", getattr(args, key), 1)
    number("--port", args.port, 0)
    number("--window_ms", args.window_ms, 0)
    number("--temperature", args.temperature, 0)
    if args.api_key is not None and not args.api_key.strip():
        raise JaxtransError("--api_key is empty; give a key or leave the flag out")
    with socket.socket(socket.AF_INET6 if ":" in args.host else socket.AF_INET) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((args.host, args.port))
        except OSError as e:
            where = f"{args.host}:{args.port}"
            raise JaxtransError(f"cannot listen on {where} ({e.strerror}); pick another --port or --host") from None


def main(argv: list[str] | None = None) -> None:
    args = _args(argv)

    def body() -> None:
        _check(args)
        import uvicorn

        from jaxtrans.serve.answer import Answerer
        from jaxtrans.serve.app import create_app
        from jaxtrans.serve.engine import Engine
        from jaxtrans.view import load_view

        view, tags = load_view(args.model, args.adapter, args.dtype, allow_other_base=args.allow_other_base)
        engine = Engine(view, args.max_batch, args.window_ms / 1000, args.chunk)
        name = args.served_name or (os.path.basename(os.path.normpath(args.adapter)) if args.adapter else args.model)
        options = Options(name, args.adapter, args.api_key, args.max_queue, args.max_n, args.max_tokens,
                          args.temperature)  # fmt: skip
        app = create_app(Answerer(engine, tags, args.plain), options)
        print(f"jaxtrans: serving {name} ({'plain' if args.plain else 'TCOT'}) on http://{args.host}:{args.port}/",
              flush=True)  # fmt: skip
        uvicorn.run(app, host=args.host, port=args.port, log_level="warning")

    guarded(body, flag_sigterm=False)


if __name__ == "__main__":
    main()
