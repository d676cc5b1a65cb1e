"""The one report writer: an evaluation's ``eval.md`` + ``metrics.png`` and a run's ``report.md``.

Both speak the metric vocabulary of :data:`SCALARS` (the keys
``jaxtrans.eval.suite.measure`` returns), formatted by one :func:`fmt`, so the
same number reads the same in both reports.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from jaxtrans import timing
from jaxtrans.data.formats import Tags
from jaxtrans.eval.measures import agreement
from jaxtrans.infer.answer_formats import FORMATS

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
    *((f"{k}_format_rate", f"{f.label} format rate (target prompts)", "higher") for k, f in FORMATS.items()),
    *(
        (f"{k}_format_rate_questions", f"{f.label} format rate (real target-language questions)", "higher")
        for k, f in FORMATS.items()
    ),
    ("pivot_chrf_questions", "English pivot chrF vs each real question's English", "higher"),
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
    if "time" in result:
        lines += [f"Run on {result['time']['machine']}.", ""]
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
    if "time" in result:
        lines += [""] + timing.markdown(result["time"], "## Time of this evaluation")
    return lines


# ---------------------------------------------------------------- a run (report.md)


def _plot_run(run_dir: str, report: dict, tags: Tags) -> list[str]:
    """loss.png (training loss of every stage, one after the other) and heldout.png (the points' metrics)."""
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
    return ["loss.png", _plot_points(run_dir, report["points"], tags)]


def _with_agreement(points: list[dict], tags: Tags) -> list[dict]:
    """The points, each with its English answers' agreement with the original's (the first point's)."""
    base, out = points[0], []
    for p in points:
        if "en_answers" in p and "en_answers" in base:
            p = {
                **p,
                "en_agreement": agreement(base["en_answers"], p["en_answers"]),  # parsed by the suite
            }
        out.append(p)
    return out


def _plot_points(run_dir: str, points: list[dict], tags: Tags) -> str:
    """heldout.png: every metric the points have, one panel each, across the curriculum."""
    import matplotlib.pyplot as plt

    points = _with_agreement(points, tags)
    shown = [(k, label) for k, label, _ in metrics(points[0]) if any(scalar(p, k) is not None for p in points)]
    if not shown:  # no held-out data configured
        return ""
    cols = min(3, len(shown))
    fig, axes = plt.subplots(-(-len(shown) // cols), cols, figsize=(4 * cols, 2.8 * -(-len(shown) // cols)),
                             squeeze=False)  # fmt: skip
    for ax in axes.flat[len(shown) :]:
        ax.axis("off")
    for ax, (key, label) in zip(axes.flat, shown, strict=False):
        have = [(p["label"], scalar(p, key)) for p in points if scalar(p, key) is not None]
        ax.plot([x for x, _ in have], [y for _, y in have], marker="o")
        ax.set_title(label, fontsize=9)
        ax.tick_params(labelsize=7)
        ax.tick_params(axis="x", rotation=30)
    fig.tight_layout()
    fig.savefig(os.path.join(run_dir, "heldout.png"), dpi=100)
    plt.close(fig)
    return "heldout.png"


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
    """The held-out table: every suite metric any point has (English answers against the original's too)."""
    points = _with_agreement(points, tags)
    shown = [(k, label) for k, label, _ in metrics(points[0]) if any(scalar(p, k) is not None for p in points)]
    lines = ["", "## Held-out measurements at every point", "",
             "Loss is nats per character (comparable across tokenizers). Agreement compares greedy answers to "
             "English prompts with the original model's (the answer part of the taught format: after `<RESPONSE>`, or "
             "TaCo's English response).", "",
             *(["![heldout](heldout.png)", ""] if shown else []),
             "| point | " + " | ".join(label for _, label in shown) + " | English answers: exact |",
             "|---|" + "---|" * (len(shown) + 1)]  # fmt: skip
    for p in points:
        cells = [fmt(scalar(p, k)) for k, _ in shown] + [fmt(scalar(p, "en_agreement.exact_match"))]
        lines.append(f"| {p['label']} | " + " | ".join(cells) + " |")
    return lines


def _outcome(report: dict, tags: Tags) -> list[str]:
    """What a reader checks first: did the format take, did target loss hold, did English stay; and each
    branch (a stage with ``start_from``, e.g. an ablation) beside the result."""
    points = _with_agreement(report["points"], tags)
    base, last = points[0], points[-1]
    lines = []
    for name, st in report.get("stages", {}).items():
        at = [p for p in points if p["label"].endswith(f"_{name}")]
        if st.get("start_from") and at and at[-1] is not last:
            b = at[-1]
            lines.append(f"- branch `{name}` (from `{st['start_from']}`): English answers chrF "
                         f"{fmt(scalar(b, 'en_agreement.chrf'))} against {fmt(scalar(last, 'en_agreement.chrf'))} "
                         f"at the end; {_rate(b)}; target loss "
                         f"{fmt(scalar(b, 'target_nats_per_char'))}")  # fmt: skip
    name, key = _format(last)
    if key in last:
        form, n = FORMATS[name], len(last.get("target_answers", []))
        lines.append(
            f"- {form.label} format rate on held-out target-language prompts (`eval.target_prompts`): {fmt(last[key])} "
            f"({round(last[key] * n)}/{n} answers with {form.shape(tags, report.get('language', ''))})"
        )
    if f"{key}_questions" in last:
        rate, n = last[f"{key}_questions"], len(last.get("target_question_answers", []))
        lines.append(
            f"- {FORMATS[name].label} format rate on real target-language questions, unlike the prompts above "
            f"(`eval.target_questions`): {fmt(rate)} ({round(rate * n)}/{n})"
        )
    if "pivot_chrf_questions" in last:
        lines.append(
            f"- the English pivot on those questions: chrF {fmt(last['pivot_chrf_questions'])} against each "
            "question's own English (100: the question restated exactly in English; low: the pivot is about "
            "something else)"
        )
    losses = [(p["label"], p["target_nats_per_char"]) for p in points if "target_nats_per_char" in p]
    if len(losses) > 1:
        low = min(losses, key=lambda x: x[1])
        lines.append(f"- target held-out loss: {fmt(losses[-1][1])} nats/char at the end, {fmt(losses[0][1])} for the "
                     f"original; the lowest was {fmt(low[1])} ({low[0]}): the end is {losses[-1][1] / low[1]:.3f}× "
                     "the lowest")  # fmt: skip
    lines += _losses(points)
    if "en_agreement" in last and last is not base:
        lines.append(f"- English answers against the original model's: chrF {fmt(scalar(last, 'en_agreement.chrf'))}, "
                     f"exact {fmt(scalar(last, 'en_agreement.exact_match'))} ({len(base['en_answers'])} held-out "
                     "prompts)")  # fmt: skip
    bad = sum(p.get("malformed_chars", 0) for p in points)
    if bad:
        lines.append(f"- {bad} incomplete UTF-8 sequences were dropped from generated answers (whole characters only)")
    return ["## Outcome", "", *lines, ""] if lines else []


def _losses(points: list[dict]) -> list[str]:
    """The end's held-out losses against the original's and, for QLoRA, against the NF4 base with untrained
    adapters: the quantisation cost and the training effect apart."""
    base, last = points[0], points[-1]
    nf4 = next((p for p in points if p["label"].endswith("_nf4")), None)
    pct = lambda x, y: f"{(x / y - 1) * 100:+.1f}%"  # noqa: E731
    lines = []
    for key, name in (("target_nats_per_char", "target"), ("en_nats_per_char", "English")):
        if key not in base or key not in last or last is base or (name == "target" and not nf4):
            continue  # (the target loss against the original's is in the line before, unless QLoRA)
        line = f"- {name} held-out loss at the end {fmt(last[key])} against the original's {fmt(base[key])} " \
               f"({pct(last[key], base[key])})"  # fmt: skip
        if nf4 and key in nf4:
            line += (
                f"; the NF4 base with untrained adapters (QLoRA's starting point) {fmt(nf4[key])}: the "
                f"quantisation costs {pct(nf4[key], base[key])}, training moved it {pct(last[key], nf4[key])}"
            )
        lines.append(line)
    before, after = scalar(base, "fertility.tokens_per_char"), scalar(last, "fertility.tokens_per_char")
    if before and after and before != after:
        lines.append(f"- target tokens per character (fertility): {fmt(before)} with the original tokenizer, "
                     f"{fmt(after)} with the extended one ({pct(after, before)})")  # fmt: skip
    return lines


def _format(p: dict) -> tuple[str, str]:
    """A point's answer format and its rate's key (reports written before the key existed are TCOT's)."""
    name = p.get("answer_format", "tcot")
    return name, f"{name}_format_rate"


def _rate(p: dict) -> str:
    name, key = _format(p)
    return f"{FORMATS[name].label} format rate {fmt(scalar(p, key))}"


def _samples(points: list[dict], tags: Tags, samples: int, language: str) -> list[str]:
    base, last, lines = points[0], points[-1], []
    form = FORMATS[_format(last)[0]]
    titles = (("en_answers", "English prompts"), ("target_answers", "Target-language prompts"),
              ("target_question_answers", "Real target-language questions"))  # fmt: skip
    for key, title in titles:
        if key not in base or key not in last:
            continue
        lines += ["", f"## Samples: {title} (first {samples})", "",
                  "An answer that `max_new_tokens` ended before the model stopped ends with ⟨cut⟩.", ""]  # fmt: skip
        for i in range(min(samples, len(base[key]))):
            cut_before, cut_after = (" ⟨cut⟩" if i in p.get(f"{key}_cut", ()) else "" for p in (base, last))
            lines.append(f"**{i + 1}.** before: {base[key][i]!r}{cut_before}")
            after = last[key][i]
            part = form.answer(after, tags, language) if key != "en_answers" else None
            shown = part if part is not None else after
            lines.append(f"   after: {shown!r}{cut_after}" + ("" if shown == after else f" (full: {after!r})"))
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
    if "time" in report:
        lines += [f"Run on {report['time']['machine']}; {len(report['time']['rows'])} timed phases below.", ""]
    _plot_run(where, report, tags)  # loss.png here, heldout.png in the held-out section
    lines += ["![loss](loss.png)", ""]
    lines += _outcome(report, tags) + _stages(report) + _points(report["points"], tags)
    lines += _samples(report["points"], tags, samples, report.get("language", ""))
    lines += _evals_and_use(report, where)
    if "time" in report:
        lines += timing.markdown(report["time"])
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
