"""``python -m jaxtrans.eval`` on the real SmolLM2 with ../shared/data; scores cross-checked with sacrebleu's CLI."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest

from jaxtrans.eval.__main__ import main
from jaxtrans.eval.suite import refused


def test_refusal_prefixes():
    assert refused("I'm sorry, but I cannot help with that.")
    assert refused("As an AI language model, I won't.")
    assert not refused("Sure, here is a plan:")


def test_eval_report_on_smollm2(shared_data, tmp_path):
    d = shared_data
    out = str(tmp_path / "eval")
    main([
        "--model", "embedded:smollm2", "--baseline", "embedded:smollm2",
        "--target_text", os.path.join(d, "th-thaigov", "thaigov_sample.jsonl"),
        "--en_text", os.path.join(d, "en-th-talpco", "talpco_en_th.jsonl"), "--en_text_column", "en",
        "--pairs", os.path.join(d, "en-th-talpco", "talpco_en_th.jsonl"), "--pair_columns", "en,th",
        "--en_prompts", os.path.join(d, "eval-mt-bench", "question.jsonl"), "--prompt_column", "turns.0",
        "--advbench", os.path.join(d, "eval-advbench", "harmful_behaviors.csv"),
        "--answer_questions", os.path.join(d, "eval-vicuna-th", "vicuna_th.jsonl"), "--question_column", "th",
        "--limit", "3", "--max_new_tokens", "16", "--out", out,
    ])  # fmt: skip
    result = json.load(open(os.path.join(out, "eval.json")))
    assert result["target_nats_per_char"] > 0 and result["fertility"]["tokens_per_char"] > 1  # Thai is costly
    assert result["en_agreement"] == {"exact_match": 1.0, "chrf": 100.0}  # the model against itself
    assert 0.0 <= result["advbench_refusal_rate"] <= 1.0 and result["advbench_n"] == 3
    answers = [json.loads(line) for line in open(result["answer_files"][0])]
    assert len(answers) == 3 and {"question_id", "answer_id", "model_id", "choices", "tstamp"} <= set(answers[0])
    assert len(answers[0]["choices"][0]["turns"]) == 1
    # the original model is measured on the same data; the report shows both, as a table and as a plot
    base = result["baseline"]
    assert base["target_nats_per_char"] == pytest.approx(result["target_nats_per_char"], abs=1e-6)
    assert base["translation_en-xx"] == result["translation_en-xx"]
    report = open(os.path.join(out, "eval.md")).read()
    assert "![metrics](metrics.png)" in report and "| chrF++ English → target |" in report
    assert os.path.getsize(os.path.join(out, "metrics.png")) > 1000
    # the same hypothesis/reference files scored by sacrebleu's own command line give the same numbers
    exe = shutil.which("sacrebleu")
    if exe is None:
        pytest.skip("the sacrebleu command is not on PATH")
    for direction in ("en-xx", "xx-en"):
        hyp = os.path.join(out, f"translation.{direction}.hyp.txt")
        ref = os.path.join(out, f"translation.{direction}.ref.txt")
        scores = result[f"translation_{direction}"]
        chrf = subprocess.run([exe, ref, "-i", hyp, "-m", "chrf", "--chrf-word-order", "2", "-b", "-w", "4"],
                              capture_output=True, text=True, timeout=120, check=True)  # fmt: skip
        bleu = subprocess.run([exe, ref, "-i", hyp, "-m", "bleu", "-tok", scores["bleu_tokenize"], "-b", "-w", "4"],
                              capture_output=True, text=True, timeout=120, check=True)  # fmt: skip
        assert abs(float(chrf.stdout.strip()) - scores["chrf++"]) < 0.01
        assert abs(float(bleu.stdout.strip()) - scores["bleu"]) < 0.01


def test_original_model_numbers_are_cached_by_what_they_depend_on(tmp_path, monkeypatch):
    """The second measurement of the same model on the same data is read back, with its files; changing
    the data's content (or the model's files) changes the key, so it is measured again."""
    from jaxtrans.data.sources import Source
    from jaxtrans.eval import cache
    from jaxtrans.eval.suite import EvalSpec

    monkeypatch.setenv("JAXTRANS_BASELINE_CACHE", str(tmp_path / "cache"))
    data, model = tmp_path / "th.txt", tmp_path / "model.gguf"
    data.write_text("สวัสดี\n")
    model.write_bytes(b"weights")
    out = tmp_path / "out"
    out.mkdir()
    calls = []

    def compute() -> dict:
        calls.append(1)
        (out / "baseline.translation.en-xx.hyp.txt").write_text("hyp\n")
        (out / "unrelated.txt").write_text("x")
        return {"target_nats_per_char": 1.5}

    def key() -> str:
        return cache.baseline_key(str(model), "cfg", EvalSpec(target_text=Source(str(data))), "tags", "baseline.")

    first = cache.cached(key(), str(out), "baseline.", compute)
    (out / "baseline.translation.en-xx.hyp.txt").unlink()
    again = cache.cached(key(), str(out), "baseline.", compute)
    assert len(calls) == 1 and first == {"target_nats_per_char": 1.5}
    assert again == {**first, "from_cache": key()}
    assert (out / "baseline.translation.en-xx.hyp.txt").read_text() == "hyp\n"  # its files come back too
    stored = json.load(open(tmp_path / "cache" / f"{key()}.json"))
    assert list(stored["files"]) == ["baseline.translation.en-xx.hyp.txt"]  # only the measurement's own files
    old = key()
    data.write_text("สวัสดีครับ\n")
    assert key() != old
    cache.cached(key(), str(out), "baseline.", compute)
    assert len(calls) == 2
    old = key()
    model.write_bytes(b"other weights")
    assert key() != old
    monkeypatch.setenv("JAXTRANS_BASELINE_CACHE", "off")
    cache.cached(old, str(out), "baseline.", compute)
    assert len(calls) == 3
