"""``python -m jaxtrans.chat``: talk to a transferred model in the terminal.

    python -m jaxtrans.chat --model embedded:smollm2 --adapter runs/thai/export/peft
    python -m jaxtrans.chat --model runs/thai/export/merged --prompt "สวัสดีครับ"

``--adapter`` is a PEFT adapter directory (what the pipeline exports, or any
PEFT LoRA for the same base); its tokenizer is used when it has one (extended
vocabularies). TCOT models show only the target-language answer;
``--show_english`` prints the English pivot too, and ``--plain`` turns TCOT
handling off for ordinary chat models. ``/reset`` clears the history.
"""

from __future__ import annotations

import argparse

from jaxtrans.errors import number
from jaxtrans.exits import guarded
from jaxtrans.view import add_allow_other_base, load_view


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m jaxtrans.chat", description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="embedded:smollm2", help="HF dir, .gguf, hub name or embedded:smollm2")
    ap.add_argument("--adapter", default=None, help="PEFT adapter directory (e.g. runs/thai/export/peft)")
    ap.add_argument("--prompt", action="append", help="answer these and exit (repeatable: one conversation)")
    ap.add_argument("--max_new_tokens", type=int, default=256)
    ap.add_argument("--show_english", action="store_true", help="also print the English query and answer")
    ap.add_argument("--plain", action="store_true", help="no TCOT handling (ordinary chat models)")
    add_allow_other_base(ap)
    args = ap.parse_args(argv)

    def body() -> None:
        from jaxtrans.infer.tcot_chat import TcotChat

        number("--max_new_tokens", args.max_new_tokens, 1)
        view, tags = load_view(args.model, args.adapter, allow_other_base=args.allow_other_base)
        chat = TcotChat.from_view(view, args.max_new_tokens, tags=tags)
        turns = args.prompt if args.prompt else None
        while True:
            if turns is not None:
                if not turns:
                    return
                query = turns.pop(0)
                print(f"> {query}")
            else:
                try:
                    query = input("> ").strip()
                except EOFError:
                    return
                if not query:
                    continue
                if query == "/reset":
                    chat.history.clear()
                    continue
            reply = chat.send(query)
            if args.plain:
                print(reply.raw.strip())
                continue
            if args.show_english:
                print(f"[EN query] {reply.en_query}\n[EN answer] {reply.en_answer}")
            print(reply.answer + ("" if reply.complete else "  [incomplete TCOT output]"))

    guarded(body, flag_sigterm=False)


if __name__ == "__main__":
    main()
