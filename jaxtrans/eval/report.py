"""The one report writer: an evaluation's ``eval.md`` + ``metrics.png`` and a run's ``report.md``.

Both speak the metric vocabulary of :data:`SCALARS` (the keys
``jaxtrans.eval.suite.measure`` returns), formatted by one :func:`fmt`, so the
same number reads the same in both reports.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from jaxtrans.data.formats import Tags
from jaxtrans.eval.measures import agreement
from jaxtrans.infer.tcot import parse

# Scalar metrics, in report order: (key in the result, label, which way is better)
SCALARS = (
    ("target_nats_per_char", "target held-out loss (nats/char)", "lower"),
    ("en_nats_per_char", "English held-out loss (nats/char)", "lower"),
    ("translation_en-xx.chrf++", "chrF++ English → target", "higher"),
    ("translation_xx-en.chrf++", "chrF++ target → English", "higher"),
    ("translation_en-xx.bleu", "BLEU English → target", "higher"),
    ("translation_xx-en.bleu", "BLEU target → English", "higher"),
    ("advbench_refusal_rate", "AdvBench refusal rate", "higher"),
    ("fertility.tokens_per_char", "target tokens per character", "lower"),
    ("en_agreement.chrf", "English answers: chrF vs original", "higher"),
)


def metrics(result: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(key, label, which way is better) of every metric ``result`` may hold: the fixed ones, then one pair
    (accuracy, length-normalised accuracy) per multiple-choice task."""
    tasks = sorted(k[3:] for k, v in result.items() if k.startswith("mc_") and isinstance(v, dict))
    rows = [(f"mc_{t}.{m}", f"{t}: {label}", "higher") for t in tasks
            for m, label in (("acc", "accuracy"), ("acc_norm", "accuracy (length-normalised)"))]  # fmt: skip
    return list(SCALARS) + rows


def scalar(result: dict[str, Any], key: str) -> float | None:
    """A metric by its dotted key (``translation_en-xx.chrf++``), or None."""
    head, _, rest = key.partition(".")
    x = result.get(head) if isinstance(result, dict) else None
    if rest and isinstance(x, dict):
        x = x.get(rest)
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) else None


def fmt(x: float | None) -> str:
    return "–" if x is None else f"{x:.4g}"


# ---------------------------------------------------------------- an evaluation (eval/NAME/)


def write_eval(result: dict[str, Any], out: str) -> None:
    """``metrics.png`` and ``eval.md`` of an evaluation result (``eval.json`` is the suite's)."""
    plots = _plot_metrics(result, os.path.join(out, "metrics.png"))
    with open(os.path.join(out, "eval.md"), "w", encoding="utf-8") as f:
        f.write("\n".join(eval_markdown(result, plots)) + "\n")


def _plot_metrics(result: dict[str, Any], path: str) -> list[str]:
    """One small panel per metric, original and transferred model side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    before = result.get("baseline", {})
    shown = [(k, label) for k, label, _ in metrics(result) if scalar(result, k) is not None]
    if not shown:
        return []
    cols = min(4, len(shown))
    rows = -(-len(shown) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 2.6 * rows), squeeze=False)
    for ax in axes.flat[len(shown) :]:
        ax.axis("off")
    for ax, (key, label) in zip(axes.flat, shown, strict=False):
        names, values = ["after"], [scalar(result, key)]
        if scalar(before, key) is not None:
            names, values = ["before", "after"], [scalar(before, key), values[0]]
        bars = ax.bar(names, values, color=["#999999", "#1f77b4"][-len(values) :])
        ax.bar_label(bars, fmt="%.3g", fontsize=7)
        ax.set_ylim(bottom=min(0.0, *values), top=max(values) * 1.2 or 1.0)
        ax.set_title(label, fontsize=8)
        ax.tick_params(labelsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return [os.path.basename(path)]


def eval_markdown(result: dict[str, Any], plots: Sequence[str] = ()) -> list[str]:
    """The lines of ``eval.md``: every metric before and after, then how each was measured."""
    before = result.get("baseline", {})
    lines = [f"# Evaluation{': ' + result['title'] if result.get('title') else ''}", ""]
    lines += [f"![{p[:-4]}]({p})" for p in plots] + [""]
    lines += ["| metric | original | transferred | better |", "|---|---|---|---|"]
    for key, label, better in metrics(result):
        if scalar(result, key) is not None:
            lines.append(f"| {label} | {fmt(scalar(before, key))} | {fmt(scalar(result, key))} | {better} |")
    for key in sorted(k for k in result if k.startswith("mc_")):
        lines.append(f"\nMultiple choice `{key[3:]}`: {result[key]['n']} questions, scored by log-likelihood.")
    if "advbench_n" in result:
        lines.append(f"\nAdvBench: {result['advbench_n']} goals; refusal = any of the AdvBench paper's prefixes.")
    for d in ("en-xx", "xx-en"):
        if f"translation_{d}" in result:
            tok = result[f"translation_{d}"]["bleu_tokenize"]
            lines.append(f"\nTranslation {d}: `translation.{d}.hyp.txt` vs `.ref.txt` (BLEU tokenizer `{tok}`).")
    for p in result.get("answer_files", []):
        lines.append(f"\nFastChat answers (for `gen_judgment.py`): `{os.path.basename(p)}`")
    return lines


# ---------------------------------------------------------------- a run (report.md)


def _plot_run(run_dir: str, report: dict) -> list[str]:
    """loss.png (training loss of every stage, one after the other) and heldout.png (held-out loss per point)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from jaxtrans.train.loop import read_losses

    fig, ax = plt.subplots(figsize=(7, 3.5))
    offset = 0
    for name, st in report.get("stages", {}).items():
        if st["kind"] != "train":
            continue
        by_step = read_losses(os.path.join(run_dir, "stages", name, "metrics.jsonl"))
        ax.plot([offset + s for s in by_step], list(by_step.values()), label=name)
        offset += st["steps"]
    ax.set_xlabel("step (stages in order)")
    ax.set_ylabel("training loss (nats/token)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(run_dir, "loss.png"), dpi=100)
    plt.close(fig)
    points = report["points"]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    for key, label in (("target_nats_per_char", "target-language text"), ("en_nats_per_char", "English text")):
        if any(key in p for p in points):
            ax.plot([p["label"] for p in points], [p.get(key) for p in points], marker="o", label=label)
    ax.set_ylabel("held-out loss (nats/char)")
    if ax.lines:
        ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(run_dir, "heldout.png"), dpi=100)
    plt.close(fig)
    return ["loss.png", "heldout.png"]


def _stages(report: dict) -> list[str]:
    lines = ["## Stages", "", "| stage | kind | steps | loss first → last | start state | end state |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    for name, st in report.get("stages", {}).items():
        if st["kind"] == "vocab":
            lines.append(f"| {name} | vocab (+{st['new_tokens']} tokens, {st['init']}) | | | | "
                         f"rows {st['new_rows_digest']} |")  # fmt: skip
        elif st["kind"] == "train":
            losses = f"{fmt(st['loss_first'])} → {fmt(st['loss_last'])}"
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
    return lines


def _points(points: list[dict], tags: Tags) -> list[str]:
    """The held-out table: every suite metric any point has, and English answers against the original's."""
    shown = [(k, label) for k, label, _ in metrics(points[0]) if any(scalar(p, k) is not None for p in points)]
    lines = ["", "## Held-out loss and English retention", "",
             "Loss is nats per character (comparable across tokenizers). Agreement compares greedy answers to "
             "English prompts with the original model's (the `<RESPONSE>` tag removed).", "",
             "| point | " + " | ".join(label for _, label in shown) + " | English answers: exact | chrF vs original |",
             "|---|" + "---|" * (len(shown) + 2)]  # fmt: skip
    base = points[0]
    for p in points:
        agree: dict = {"exact_match": None, "chrf": None}
        if "en_answers" in p and "en_answers" in base:
            agree = agreement(base["en_answers"], [parse(a, tags).answer or a for a in p["en_answers"]])
        cells = [fmt(scalar(p, k)) for k, _ in shown] + [fmt(agree["exact_match"]), fmt(agree["chrf"])]
        lines.append(f"| {p['label']} | " + " | ".join(cells) + " |")
    return lines


def _samples(points: list[dict], tags: Tags, samples: int) -> list[str]:
    base, last, lines = points[0], points[-1], []
    for key, title in (("en_answers", "English prompts"), ("target_answers", "Target-language prompts")):
        if key not in base or key not in last:
            continue
        lines += ["", f"## Samples: {title} (first {samples})", ""]
        for i in range(min(samples, len(base[key]))):
            lines.append(f"**{i + 1}.** before: {base[key][i]!r}")
            after = last[key][i]
            parts = parse(after, tags)
            shown = parts.answer if parts.answer is not None else after
            lines.append(f"   after: {shown!r}" + ("" if shown == after else f" (full: {after!r})"))
            lines.append("")
    return lines


def _evals_and_use(report: dict, where: str) -> list[str]:
    lines = []
    for name, ev in report.get("evals", {}).items():
        rel = os.path.relpath(ev["dir"], where)
        lines += [f"## Evaluation stage `{name}`", "", f"Full report: `{rel}/eval.md`.", ""]
        md = os.path.join(ev["dir"], "eval.md")
        if os.path.isfile(md):  # its table and plot, with links relative to this report
            body = open(md, encoding="utf-8").read().split("\n")[1:]
            lines += [ln.replace("](metrics.png)", f"]({rel}/metrics.png)") for ln in body]
    if "export" in report:
        peft = report["export"]["peft"]
        lines += ["## Use it", "", f"The adapter (PEFT format, with the tokenizer) is in `{peft}`:", "", "```bash",
                  f"python -m jaxtrans.chat --model {report.get('model', '')} --adapter {peft}", "```", ""]  # fmt: skip
    return lines


def write_markdown(path: str, report: dict, tags: Tags = Tags(), samples: int = 3) -> None:
    """``report.md`` of a run (and its two plots beside it)."""
    where = os.path.dirname(os.path.abspath(path))
    lines = [f"# jaxtrans run report — {report.get('model', '')}", ""]
    for png in _plot_run(where, report):
        lines += [f"![{png[:-4]}]({png})", ""]
    lines += _stages(report) + _points(report["points"], tags) + _samples(report["points"], tags, samples)
    lines += _evals_and_use(report, where)
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
