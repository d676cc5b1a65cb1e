"""A real multiple-choice file for tests: which of four Thai sentences translates an English one (TALPCo)."""

from __future__ import annotations

import json
import os

FILENAME = "choice_th.jsonl"


def talpco(shared_data: str, n: int = 40) -> list[dict]:
    rows = [json.loads(x) for x in open(os.path.join(shared_data, "en-th-talpco", "talpco_en_th.jsonl"))]
    return [r for r in rows if r["en"] and r["th"]][:n]


def write_choice_file(shared_data: str, path: str, n: int = 12) -> str:
    """``question`` (the English sentence), four Thai ``choices``, the ``answer`` index (rotating 0..3)."""
    rows = talpco(shared_data)
    with open(path, "w", encoding="utf-8") as f:
        for i in range(n):
            options = [rows[(i + k) % len(rows)]["th"] for k in range(4)]
            answer = i % 4
            options[0], options[answer] = options[answer], options[0]
            rec = {"question": f"English: {rows[i]['en']}\nThai:", "choices": options, "answer": answer}
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
    return path
