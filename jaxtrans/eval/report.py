"""The run report as Markdown: per-stage data and losses, held-out loss and English retention at each point."""

from __future__ import annotations

from typing import Any

from jaxtrans.data.formats import Tags
from jaxtrans.eval.measures import agreement
from jaxtrans.infer.tcot import parse


def _fmt(x: Any, digits: int = 4) -> str:
    return f"{x:.{digits}f}" if isinstance(x, float) else ("–" if x is None else str(x))


def write_plots(run_dir: str, report: dict) -> list[str]:
    """loss.png (training loss of every stage, one after the other) and heldout.png (held-out loss per point)."""
    import json
    import os

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    fig, ax = plt.subplots(figsize=(7, 3.5))
    offset = 0
    for name, st in report.get("stages", {}).items():
        path = os.path.join(run_dir, "stages", name, "metrics.jsonl")
        if st["kind"] != "train" or not os.path.isfile(path):
            continue
        by_step = {}
        for line in open(path):
            row = json.loads(line)
            if "loss" in row:
                by_step[row["step"]] = row["loss"]
        steps = sorted(by_step)
        ax.plot([offset + s for s in steps], [by_step[s] for s in steps], label=name)
        offset += st["steps"]
    ax.set_xlabel("step (stages in order)")
    ax.set_ylabel("training loss (nats/token)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(run_dir, "loss.png"), dpi=100)
    plt.close(fig)
    written.append("loss.png")
    points = report["points"]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    for key, label in (("th_nats_per_char", "target-language text"), ("en_nats_per_char", "English text")):
        if any(key in p for p in points):
            ax.plot([p["label"] for p in points], [p.get(key) for p in points], marker="o", label=label)
    ax.set_ylabel("held-out loss (nats/char)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(run_dir, "heldout.png"), dpi=100)
    plt.close(fig)
    written.append("heldout.png")
    return written


def write_markdown(path: str, report: dict, tags: Tags = Tags(), samples: int = 3) -> None:
    import os

    points = report["points"]
    base = points[0]
    lines = [f"# jaxtrans run report — {report.get('model', '')}", ""]
    for png in write_plots(os.path.dirname(os.path.abspath(path)), report):
        lines += [f"![{png[:-4]}]({png})", ""]
    lines += [
        "## Stages",
        "",
        "| stage | kind | steps | loss first → last | start state | end state |",
        "|---|---|---|---|---|---|",
    ]
    for name, st in report.get("stages", {}).items():
        if st["kind"] == "vocab":
            lines.append(
                f"| {name} | vocab (+{st['new_tokens']} tokens, {st['init']}) | | | | rows {st['new_rows_digest']} |"
            )
        else:
            losses = f"{_fmt(st['loss_first'])} → {_fmt(st['loss_last'])}"
            lines.append(f"| {name} | train | {st['steps']} | {losses} | {st['digest_in']} | {st['digest_out']} |")
    lines += ["", "Each train stage starts from the state the previous one ended with (same digest).", ""]
    for st in report.get("stages", {}).values():
        for comp in st.get("data") or []:
            rd, pk = comp["read"], comp["pack"] or {}
            lines.append(
                f"- `{comp['name']}` ({comp['kind']}, {comp['source']}): {rd['records']} records, "
                f"{rd['skipped']} skipped, {comp['examples']} examples, {pk.get('truncated', 0)} truncated, "
                f"{pk.get('rows', 0)} packed rows, {comp['rows_used']} rows used ({comp['epochs']:.2f} epochs)"
            )
    lines += ["", "## Held-out loss and English retention", ""]
    lines += ["Loss is nats per character (comparable across tokenizers). Agreement compares greedy answers to "
              "English prompts with the original model's (the `<RESPONSE>` tag removed).", ""]  # fmt: skip
    lines += [
        "| point | target text | English text | English answers: exact | chrF vs original |",
        "|---|---|---|---|---|",
    ]
    for p in points:
        agree: dict = {"exact_match": None, "chrf": None}
        if "en_answers" in p and "en_answers" in base:
            agree = agreement(base["en_answers"], [parse(a, tags).answer or a for a in p["en_answers"]])
        lines.append(
            f"| {p['label']} | {_fmt(p.get('th_nats_per_char'))} | {_fmt(p.get('en_nats_per_char'))} | "
            f"{_fmt(agree['exact_match'], 2)} | {_fmt(agree['chrf'], 1)} |"
        )
    last = points[-1]
    for key, title in (("en_answers", "English prompts"), ("th_answers", "Target-language prompts")):
        if key not in base:
            continue
        lines += ["", f"## Samples: {title} (first {samples})", ""]
        for i in range(min(samples, len(base[key]))):
            lines.append(f"**{i + 1}.** before: {base[key][i]!r}")
            after = last[key][i]
            parts = parse(after, tags)
            shown = parts.answer if parts.answer is not None else after
            lines.append(f"   after: {shown!r}" + ("" if shown == after else f" (full: {after!r})"))
            lines.append("")
    for name, ev in report.get("evals", {}).items():
        rel = os.path.relpath(ev["dir"], os.path.dirname(os.path.abspath(path)))
        lines += [f"## Evaluation stage `{name}`", "", f"Full report: `{rel}/eval.md`.", ""]
        md = os.path.join(ev["dir"], "eval.md")
        if os.path.isfile(md):  # its table and plot, with links relative to this report
            body = open(md, encoding="utf-8").read().split("\n")[1:]
            lines += [ln.replace("](metrics.png)", f"]({rel}/metrics.png)") for ln in body]
    if "export" in report:
        peft = report["export"]["peft"]
        lines += ["## Use it", "", f"The adapter (PEFT format, with the tokenizer) is in `{peft}`:", "", "```bash",
                  f"python -m jaxtrans.chat --model {report.get('model', '')} --adapter {peft}", "```", ""]  # fmt: skip
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
