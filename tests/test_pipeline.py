"""End to end: every stage kind on a tiny random model with real data; hand-off between stages; resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.choice_data import FILENAME, write_choice_file
from tests.conftest import COMPILE_CACHE_ENV, REPO, tiny_hf_model

CONFIG = os.path.join(REPO, "tests", "tiny_pipeline.py")
WALL: dict[str, float] = {}  # output_dir -> seconds the command took, as this test saw it


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory, shared_data):
    """A random tiny Llama that speaks SmolLM2's tokenizer (byte-level BPE with a chat template)."""
    from jaxtrans.pretrained import load_tokenizer, resolve

    tok = load_tokenizer(resolve("embedded:smollm2"))
    _, path = tiny_hf_model(
        tmp_path_factory.mktemp("model"),
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        max_position_embeddings=512,
        tie_word_embeddings=True,
    )
    tok.save_pretrained(path)
    write_choice_file(shared_data, os.path.join(path, FILENAME))  # the final eval stage's multiple-choice task
    return path


def _main(model: str, out: str, *extra: str, timeout: int = 600, wait: bool = True):
    cmd = [sys.executable, "-m", "jaxtrans.main", f"--config={CONFIG}:{model}", f"--config.output_dir={out}", *extra]
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu",
           **COMPILE_CACHE_ENV}  # fmt: skip
    if not wait:
        return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    t0 = time.perf_counter()
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    WALL[out] = time.perf_counter() - t0
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    with open(os.path.join(out, "report.json")) as f:
        return json.load(f)


@pytest.fixture(scope="module")
def full_run(tiny_model, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("run") / "out")
    return out, _main(tiny_model, out)


def test_the_report_says_where_the_time_went_and_on_what_machine(full_run):
    """report.md and eval.md carry a time table per stage and phase; its rows add up to the command's wall time."""
    out, report = full_run
    table = report["time"]
    assert table["machine"].split(", ")[-1].startswith("jax ") and "cores" in table["machine"]
    rows = {(r["stage"], r["phase"]): r for r in table["rows"]}
    assert sum(r["seconds"] for r in table["rows"]) == pytest.approx(table["wall_s"], abs=0.05)
    assert table["wall_s"] == pytest.approx(WALL[out], rel=0.05)  # the command as this test timed it
    for name in ("pretrain", "translate", "transfer"):
        steps = rows[(name, "train steps")]
        assert steps["count"] > 0 and steps["positions"] > 0 and (name, "compile the step") in rows
        assert (name, "held-out point") in rows
    assert ("start", "load the model") in rows and ("start", "held-out point (original model)") in rows
    assert any(phase.startswith("generate ") for _, phase in rows)  # recovery answers, translations
    assert ("final", "evaluation (eval.md has its own time table)") in rows
    with open(os.path.join(out, "report.md"), encoding="utf-8") as f:
        md = f.read()
    assert f"Run on {table['machine']}" in md and "## Time" in md and "| transfer | train steps |" in md
    with open(os.path.join(out, "eval", "final", "eval.md"), encoding="utf-8") as f:
        assert "## Time of this evaluation" in f.read()


def test_the_report_gives_the_format_rate_on_real_questions_apart(full_run):
    """``eval.target_questions`` (real Thai questions, not the training template): their own rate and samples."""
    out, report = full_run
    last = report["points"][-1]
    assert 0 <= last["tcot_format_rate_questions"] <= 1 and len(last["target_question_answers"]) == 2
    assert "tcot_format_rate_questions" in report["points"][0]  # the original model's too
    assert 0 <= last["pivot_chrf_questions"] <= 100  # the <EN> queries against the questions' own English
    with open(os.path.join(out, "report.md"), encoding="utf-8") as f:
        md = f.read()
    assert "format rate on real target-language questions" in md and "the English pivot on those questions" in md
    assert "## Samples: Real target-language questions" in md


def test_every_stage_kind_runs_and_hands_off(full_run):
    out, report = full_run
    stages = report["stages"]
    kinds = {c["kind"] for st in stages.values() for c in st.get("data") or []}
    assert kinds == {"pretrain", "translate", "tcot", "recovery_kd", "taco", "sft"}
    # each train stage starts from exactly the state the previous one ended with
    assert stages["translate"]["digest_in"] == stages["pretrain"]["digest_out"]
    assert stages["transfer"]["digest_in"] == stages["translate"]["digest_out"]
    assert all(st["digest_in"] != st["digest_out"] for st in stages.values() if st["kind"] == "train")
    # the first train stage starts its new rows from the vocab stage's zip-tie rows
    assert stages["pretrain"]["new_rows_digest_in"] == stages["vocab"]["new_rows_digest"]
    assert stages["vocab"]["new_tokens"] >= 100
    # generation filled the missing fields, cached to JSONL: base answers for KD/TCOT/TaCo, translations by "self"
    gen = os.path.join(out, "generated")  # shared by the stages, keyed by the generating state
    answers = [json.loads(line) for line in open(os.path.join(gen, "answers.jsonl"))]
    # recovery + tcot prompts (taco has its answers), each generated once
    assert len({a["input"] for a in answers}) == len(answers) == 6 + 6
    assert os.path.getsize(os.path.join(gen, "to_target.jsonl")) > 0
    assert os.path.isfile(os.path.join(out, "report.md"))
    assert [p["label"] for p in report["points"]] == ["0_base", "2_pretrain", "3_translate", "4_transfer"]
    # every point answers the held-out prompts: English retention and TCOT format rate along the curriculum
    assert all(len(p["en_answers"]) == 4 and 0 <= p["tcot_format_rate"] <= 1 for p in report["points"])
    md = open(os.path.join(out, "report.md"), encoding="utf-8").read()
    assert "## Outcome" in md and "TCOT format rate" in md and "\ufffd" not in md
    # the eval stage measured the final state and the original model on the same data, and wrote its report
    final = json.load(open(os.path.join(out, "eval", "final", "eval.json")))
    assert final["state"] == stages["transfer"]["digest_out"]
    assert set(final["baseline"]) >= {"target_nats_per_char", "translation_en-xx", "advbench_refusal_rate"}
    assert final["target_nats_per_char"] != final["baseline"]["target_nats_per_char"]  # trained vs original
    assert final["fertility"]["tokens_per_char"] < final["baseline"]["fertility"]["tokens_per_char"]  # new tokens
    assert final["advbench_n"] == 3 and len(final["en_agreement"]) == 2
    assert len(open(final["answer_files"][0]).readlines()) == 3
    assert os.path.getsize(os.path.join(out, "eval", "final", "metrics.png")) > 1000
    assert "## Evaluation stage `final`" in open(os.path.join(out, "report.md")).read()
    # multiple choice from a local file, scored by log-likelihood, before and after
    assert final["mc_talpco_choice"]["n"] == 3 and final["baseline"]["mc_talpco_choice"]["n"] == 3  # limit=3
    assert "talpco_choice: accuracy" in open(os.path.join(out, "eval", "final", "eval.md")).read()


def test_rerun_restores_finished_stages(full_run, tiny_model):
    out, report = full_run
    again = _main(tiny_model, out)
    for name, st in report["stages"].items():
        st, st_again = dict(st), dict(again["stages"][name])
        st.pop("seconds_this_run", None)
        assert st_again.pop("seconds_this_run", 0) < 60  # restored, not retrained
        assert st_again == st


def _staging_folders(out: str) -> list[str]:
    """Folders a writer builds before renaming them into place (``jaxtrans.staging``): none may outlive a stop."""
    prefixes = (".vocab-", ".export-", ".staged-")
    return [os.path.join(r, d) for r, ds, _ in os.walk(out) for d in ds if d.startswith(prefixes)]


def _lines(path: str) -> int:
    return open(path).read().count("\n") if os.path.isfile(path) else 0


def test_sigterm_in_every_phase_exits_75_and_resumes_to_the_uninterrupted_run(full_run, tiny_model, tmp_path):
    """SIGTERM during vocabulary training, answer generation, a train stage and an eval stage, one run after
    another on the same directory: each exits 75 at its phase's next safe point, leaves no staging folder, and
    the last re-run ends with the uninterrupted run's digests."""
    _, reference = full_run
    out = str(tmp_path / "out")
    phases = {
        "vocabulary training": lambda: os.path.isfile(os.path.join(out, "stages", "vocab", "corpus.txt")),
        "answer generation": lambda: any(
            _lines(os.path.join(out, "generated", f)) for f in os.listdir(os.path.join(out, "generated"))
        ) if os.path.isdir(os.path.join(out, "generated")) else False,
        "a train stage": lambda: _lines(os.path.join(out, "stages", "transfer", "metrics.jsonl")) >= 1,
        "an eval stage": lambda: os.path.isdir(os.path.join(out, "eval", "final")),
    }  # fmt: skip
    stopped = []
    for phase, reached in phases.items():
        proc = _main(tiny_model, out, wait=False)
        deadline = time.time() + 540
        while time.time() < deadline and proc.poll() is None and not reached():
            time.sleep(0.02)
        if proc.poll() is not None:  # the phase was restored or passed between two polls: nothing to stop
            assert proc.returncode == 0, proc.stdout.read()[-3000:]
            break
        proc.send_signal(signal.SIGTERM)
        sent = time.time()
        stdout, _ = proc.communicate(timeout=300)
        assert proc.returncode == 75, (phase, stdout[-3000:])
        assert "stopped by SIGTERM" in stdout and "re-run the same command" in stdout and "Traceback" not in stdout
        assert not _staging_folders(out), (phase, _staging_folders(out))
        stopped.append((phase, round(time.time() - sent, 1)))
    assert len(stopped) >= 3, stopped  # vocabulary, generation and training at least were caught mid-phase
    print("stopped (phase, seconds to exit):", stopped)
    resumed = _main(tiny_model, out)
    for name, stage in reference["stages"].items():
        if "digest_out" in stage:
            assert resumed["stages"][name]["digest_out"] == stage["digest_out"], name
    assert _lines(os.path.join(out, "stages", "transfer", "metrics.jsonl")) >= 3


def test_a_new_stage_kind_is_one_module_and_one_registration(tiny_model, tmp_path, shared_data):
    from ml_collections import config_dict

    from jaxtrans import pipeline
    from jaxtrans.config import component, run_defaults, source, train_stage
    from jaxtrans.errors import JaxtransError
    from tests import note_stage

    cfg = run_defaults()
    cfg.model.path, cfg.output_dir, cfg.progress = tiny_model, str(tmp_path / "out"), False
    cfg.lora.rank, cfg.lora.alpha = 2, 4.0
    pairs = source(os.path.join(shared_data, "en-th-talpco", "talpco_en_th.jsonl"), columns={"src": "en", "tgt": "th"})
    cfg.curriculum = ("sft", "note")
    cfg.stages = config_dict.ConfigDict({
        "sft": train_stage({"pairs": component("translate", pairs)}, steps=1, seq_len=64, batch_size=8),
        "note": {"kind": "note", "text": "hello"},
    })  # fmt: skip
    with pytest.raises(JaxtransError, match="kind 'note' is not one of vocab, train, eval"):
        pipeline.check(cfg)
    pipeline.register("note", note_stage)
    try:
        report = pipeline.run(cfg)
    finally:
        pipeline.STAGE_KINDS.pop("note")
    assert report["notes"]["note"] == {"after": ["sft"], "state": report["stages"]["sft"]["digest_out"]}
    with open(os.path.join(cfg.output_dir, "stages", "note", "note.txt")) as f:
        assert f.read() == f"hello {report['stages']['sft']['digest_out']}\n"


@pytest.mark.parametrize(
    "config", ["thai.py", "thai.py:local", "thai.py:llama2_7b", "thai.py:llama31_8b", "thai.py:qwen3_8b",
               "taco_nepali.py", "taco_nepali.py:local", "taco_nepali.py:llama31_8b", "taco_nepali.py:qwen3_8b",
               "bailong_zh_hant.py", "bailong_zh_hant.py:local", "bailong_zh_hant.py:llama31_8b",
               "bailong_zh_hant.py:qwen3_8b"],
)  # fmt: skip
def test_every_shipped_config_passes_its_checks(config, shared_data):
    """Each recipe's values, and (local and embedded variants) its local data, read the way a run reads them:
    the script of every target-language source included."""
    import jax

    from jaxtrans import pipeline, sharding
    from jaxtrans.config import load_file
    from jaxtrans.plan import PRESETS

    cfg = load_file(os.path.join(REPO, "configs", config))
    pipeline.check(cfg)
    if cfg.model.path not in PRESETS:  # the hub models' tokenizers would need the network
        counts = pipeline.preflight(cfg, sharding.make_mesh(1, 1, 1, jax.devices()[:1]))  # one CPU device
        assert counts and all(n > 0 for n in counts.values())


def test_a_qwen3_base_runs_vocab_train_and_eval_and_a_rerun_restores_it(tmp_path, shared_data):
    """A random Qwen3 (q/k norms, grouped KV heads, head_dim not hidden/heads, untied) speaking SmolLM2's
    byte-level BPE through vocabulary extension, a train stage and the eval stage; the same command again
    restores every stage."""
    from jaxtrans.pretrained import load_tokenizer, resolve

    tok = load_tokenizer(resolve("embedded:smollm2"))
    sizes = dict(hidden_size=48, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2, head_dim=16)
    _, path = tiny_hf_model(tmp_path, "qwen3", vocab_size=len(tok), max_position_embeddings=512, **sizes)
    tok.save_pretrained(path)
    out = str(tmp_path / "out")
    stages = "--config.curriculum=('vocab', 'pretrain', 'final')"
    report = _main(path, out, stages)
    assert report["stages"]["vocab"]["new_tokens"] > 0
    assert report["stages"]["pretrain"]["loss_last"] < report["stages"]["pretrain"]["loss_first"]
    assert "final" in report.get("evals", report["stages"])
    again = _main(path, out, stages)
    assert again["stages"]["pretrain"]["digest_out"] == report["stages"]["pretrain"]["digest_out"]
    assert again["stages"]["pretrain"]["seconds_this_run"] < 60
    # the frozen embedding table in host memory (lora.host_embedding): the same trained state, the same evaluation
    hosted = _main(path, str(tmp_path / "hosted"), stages, "--config.lora.host_embedding=True")
    assert hosted["stages"]["pretrain"]["digest_out"] == report["stages"]["pretrain"]["digest_out"]
    same = lambda points: [{k: v for k, v in p.items() if k != "from_cache"} for p in points]  # noqa: E731
    assert same(hosted["points"]) == same(report["points"])  # the held-out answers and losses
    for name in ("translation.en-xx.hyp.txt", "translation.xx-en.hyp.txt"):
        with (
            open(os.path.join(out, "eval", "final", name)) as a,
            open(os.path.join(hosted["evals"]["final"]["dir"], name)) as b,
        ):
            assert a.read() == b.read()
