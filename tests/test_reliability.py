"""A run directory you can trust: changed settings are refused (or retrained with restart_from), one writer at a
time, no non-finite state saved, bad values refused before any model weight is read, SIGTERM anywhere is 75."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from jaxtrans.errors import JaxtransError
from tests.conftest import COMPILE_CACHE_ENV, REPO

CONFIG = os.path.join(REPO, "tests", "tiny_two_stages.py")
ENV = {
    **os.environ,
    "XLA_FLAGS": "--xla_force_host_platform_device_count=4",
    "JAX_PLATFORMS": "cpu",
    **COMPILE_CACHE_ENV,
}


def _cmd(model: str, out: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "jaxtrans.main", f"--config={CONFIG}:{model}", f"--config.output_dir={out}", *extra]


def _main(model: str, out: str, *extra: str, code: int = 0) -> subprocess.CompletedProcess:
    done = subprocess.run(_cmd(model, out, *extra), cwd=REPO, env=ENV, capture_output=True, text=True, timeout=600)
    assert done.returncode == code, done.stdout[-2000:] + done.stderr[-3000:]
    return done


def _report(out: str) -> dict:
    with open(os.path.join(out, "report.json")) as f:
        return json.load(f)


def _error_line(done: subprocess.CompletedProcess) -> str:
    lines = [ln for ln in done.stderr.splitlines() if ln.startswith("jaxtrans: error:")]
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr[-3000:]
    return lines[0]


def _steps(out: str, stage: str) -> list[int]:
    with open(os.path.join(out, "stages", stage, "metrics.jsonl")) as f:
        return [json.loads(line)["step"] for line in f if '"loss"' in line]


def _start_holding_the_lock(model: str, out: str) -> subprocess.Popen:
    """A run in the background, returned once it holds the run directory's lock (before it reads the model)."""
    proc = subprocess.Popen(_cmd(model, out), cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)  # fmt: skip
    lock = os.path.join(out, "jaxtrans.lock")
    deadline = time.time() + 120
    while not (os.path.isfile(lock) and os.path.getsize(lock)) and time.time() < deadline:
        time.sleep(0.05)
    return proc


def _files(out: str) -> dict[str, float]:
    """Every file under ``out`` with its modification time, but the lock (each run writes its PID there)."""
    found = {os.path.join(r, f): os.path.getmtime(os.path.join(r, f)) for r, _, fs in os.walk(out) for f in fs}
    return {k: v for k, v in found.items() if not k.endswith("jaxtrans.lock")}


def test_changed_settings_are_refused_and_restart_from_retrains_from_that_stage(smol_tiny, shared_data, tmp_path):
    out = str(tmp_path / "run")
    _main(smol_tiny, out)
    first = _report(out)
    config_before = open(os.path.join(out, "config.json")).read()
    files_before = _files(out)
    # another learning rate for stage b: refused before the model is read, naming the key; nothing changes
    t0 = time.time()
    refused = _main(smol_tiny, out, "--config.stages.b.learning_rate=1e-3", code=2)
    line = _error_line(refused)
    assert "stage 'b' made with other settings (stages.b.learning_rate changed)" in line, line
    assert "--config.restart_from=b" in line and "--config.output_dir=NEW" in line
    assert "loaded" not in refused.stdout and time.time() - t0 < 60
    assert open(os.path.join(out, "config.json")).read() == config_before  # describes what the results are
    assert _files(out) == files_before
    # another adapter shape: the same refusal, not an orbax shape error
    refused = _main(smol_tiny, out, "--config.lora.rank=4", code=2)
    assert "stage 'a' made with other settings (lora.rank changed)" in _error_line(refused)
    # restart_from=b: b (and nothing before it) is retrained with the new rate
    _main(smol_tiny, out, "--config.stages.b.learning_rate=1e-3", "--config.restart_from=b")
    second = _report(out)
    assert second["stages"]["a"] == first["stages"]["a"] | {
        "seconds_this_run": second["stages"]["a"]["seconds_this_run"]
    }
    assert second["stages"]["a"]["seconds_this_run"] < 30  # restored, not retrained
    assert second["stages"]["b"]["digest_in"] == first["stages"]["b"]["digest_in"]
    assert second["stages"]["b"]["digest_out"] != first["stages"]["b"]["digest_out"]
    assert _steps(out, "b") == [1, 2, 3]  # a fresh stage, not a resumed one
    # the same command again: identical digests, no training
    _main(smol_tiny, out, "--config.stages.b.learning_rate=1e-3", "--config.restart_from=b")
    third = _report(out)
    assert [third["stages"][s]["digest_out"] for s in "ab"] == [second["stages"][s]["digest_out"] for s in "ab"]
    assert _steps(out, "b") == [1, 2, 3]
    # an earlier stage's change is refused even with restart_from naming a later stage
    refused = _main(smol_tiny, out, "--config.seed=3", "--config.restart_from=b", code=2)
    assert "stage 'a' made with other settings (seed changed)" in _error_line(refused)


def test_a_second_instance_on_the_same_run_directory_is_refused_at_once(smol_tiny, shared_data, tmp_path):
    out = str(tmp_path / "run")
    first = _start_holding_the_lock(smol_tiny, out)
    t0 = time.time()
    second = _main(smol_tiny, out, code=2)
    assert time.time() - t0 < 30  # (most of it is starting Python and jax; the lock itself answers at once)
    assert f"is in use by another jaxtrans run (pid {first.pid} on" in _error_line(second)
    stdout, stderr = first.communicate(timeout=600)
    assert first.returncode == 0, stderr[-3000:]
    assert _steps(out, "a") == [1, 2, 3] and _steps(out, "b") == [1, 2, 3]  # one metrics line per step


def _finite_checkpoints(stage_dir: str) -> list[bool]:
    import orbax.checkpoint as ocp

    out = []
    ckpts = os.path.join(stage_dir, "checkpoints")
    for step in sorted(d for d in os.listdir(ckpts) if d.isdigit()):
        tree = ocp.StandardCheckpointer().restore(os.path.join(ckpts, step, "state"))
        leaves = [np.asarray(x) for x in __import__("jax").tree.leaves(tree)]
        out.append(all(np.all(np.isfinite(x)) for x in leaves if np.issubdtype(x.dtype, np.floating)))
    return out


def test_a_nonfinite_step_stops_without_saving_it_and_a_lower_rate_retrains_the_stage(smol_tiny, shared_data, tmp_path):
    out = str(tmp_path / "run")
    done = _main(smol_tiny, out, "--config.stages.a.learning_rate=1e30", code=2)
    line = _error_line(done)
    assert "not finite, so the step changed nothing and stage 'a' stopped (last good checkpoint: step" in line, line
    assert "lower the learning rate and re-run" in line
    assert all(_finite_checkpoints(os.path.join(out, "stages", "a")))
    assert os.path.isfile(os.path.join(out, "stages", "a", "nonfinite.json"))
    # the fix: a lower rate; the stopped stage is retrained from its (finite) start, the run finishes
    again = _main(smol_tiny, out, "--config.stages.a.learning_rate=1e-3")
    assert "stopped on non-finite values before" in again.stdout
    report = _report(out)
    assert all(np.isfinite(report["stages"][s]["loss_last"]) for s in "ab")
    assert not os.path.isfile(os.path.join(out, "stages", "a", "nonfinite.json"))
    # skip_nonfinite_steps: the bad steps change nothing and the stage goes on
    skipped = str(tmp_path / "skip")
    _main(smol_tiny, skipped, "--config.stages.a.learning_rate=1e30", "--config.stages.a.skip_nonfinite_steps=3",
          "--config.stages.a.steps=2", "--config.curriculum=('a',)")  # fmt: skip
    with open(os.path.join(skipped, "stages", "a", "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f if '"loss"' in line]
    assert [r["finite"] for r in rows] == [1.0, 0.0] and all(_finite_checkpoints(os.path.join(skipped, "stages", "a")))


def test_sigterm_before_the_training_loop_exits_75(smol_tiny, shared_data, tmp_path):
    out = str(tmp_path / "run")
    proc = _start_holding_the_lock(smol_tiny, out)
    proc.send_signal(signal.SIGTERM)  # while the model loads (before any training loop)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 75, stderr[-3000:]
    assert "re-run the same command to resume" in stderr and "Traceback" not in stderr


# ---------------------------------------------------------------- bad values, refused before any model work


def _thai(*overrides: tuple[str, object]):
    from jaxtrans.config import load_file

    cfg = load_file(os.path.join(REPO, "configs", "thai.py"))
    cfg.unlock()
    for key, value in overrides:
        node = cfg
        *parents, last = key.split(".")
        for p in parents:
            node = node[p]
        node[last] = value
    return cfg


@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            (("stages.pretrain.learning_rate", -0.01),),
            "stages.pretrain.learning_rate=-0.01 must be a finite number > 0",
        ),
        ((("stages.pretrain.learning_rate", float("nan")),), "stages.pretrain.learning_rate=nan must be a finite"),
        ((("stages.pretrain.learning_rate", 0.0),), "stages.pretrain.learning_rate=0.0 must be a finite number > 0"),
        ((("stages.pretrain.new_rows_learning_rate", float("inf")),), "new_rows_learning_rate=inf must be a finite"),
        (
            (("stages.pretrain.schedule", "cosin"),),
            "schedule='cosin' is not one of cosine, linear, constant; did you mean 'cosine'?",
        ),
        (
            (("stages.pretrain.too_long", "cut"),),
            "stages.pretrain.too_long='cut' is not one of split, truncate, skip, error",
        ),
        ((("stages.pretrain.save_every", 0),), "stages.pretrain.save_every=0 must be a finite number >= 1"),
        ((("stages.pretrain.steps", 0),), "stages.pretrain.steps=0 must be a finite number >= 1"),
        ((("stages.pretrain.eval_every", -1),), "stages.pretrain.eval_every=-1 must be a finite number >= 0"),
        ((("stages.pretrain.data.thai.source.limit", -5),), "limit=-5 must be a whole number >= 0"),
        ((("stages.pretrain.data.thai.source.skip", -1),), "skip=-1 must be a whole number >= 0"),
        (
            (("stages.pretrain.distill_divergence", "kld"),),
            "distill_divergence='kld' is not one of kl, reverse_kl, jsd",
        ),
        ((("curriculum", ("vocab", "final")),), "the curriculum has no train stage"),
        (
            (("model.remat", "ful"),),
            "model.remat='ful' is not one of none, full, save_dots, offload_residuals; did you mean 'full'?",
        ),
        ((("generation.max_new_tokens", -3),), "generation.max_new_tokens=-3 must be a finite number >= 1"),
        ((("restart_from", "pretrian"),), "restart_from='pretrian' is not a stage of the curriculum; did you mean"),
        ((("seed", -1),), "seed=-1 must be a whole number from 0 to 2**32 - 1"),
        ((("lora.alpha", float("nan")),), "lora alpha must be a finite number > 0, got nan"),
        ((("stages.pretrain.data.thai.weight", float("nan")),), "'pretrain.thai': weight must be a finite number > 0"),
        ((("stages.pretrain.seq_len", 1),), "stages.pretrain.seq_len=1 must be a finite number >= 2"),
        ((("stages.pretrain.end_lr_ratio", 2.0),), "stages.pretrain.end_lr_ratio=2.0 must be at most 1"),
        ((("stages.pretrain.skip_nonfinite_steps", -1),), "skip_nonfinite_steps=-1 must be a finite number >= 0"),
        (
            (("lora.targets", ","), ("curriculum", ("pretrain", "final"))),
            "lora.targets=',' adapts no layer, and neither a vocab stage nor lora.modules_to_save gives the run",
        ),
        ((("output_dir", ""),), "output_dir is empty"),
        ((("output_dir", "/proc/version"),), "output_dir /proc/version is a file"),
        ((("output_dir", "/proc/version/run"),), "is under /proc/version, which is a file"),
    ],
)
def test_bad_values_are_refused_by_the_config_check(overrides, message):
    from jaxtrans import pipeline

    cfg = _thai(*overrides)
    with pytest.raises(JaxtransError, match=None) as e:
        pipeline.check(cfg)
    assert message in str(e.value), str(e.value)


@pytest.mark.parametrize(
    "body, message",
    [
        ("def get_config(:\n    pass\n", "bad.py:1: syntax error"),
        ("def get_config():\n    return {'a': 1}\n", "get_config() returned dict, not an ml_collections ConfigDict"),
        ("def get_config():\n    return None\n", "get_config() returned NoneType"),
        (
            "import ml_collections\n\ndef get_config():\n    c = ml_collections.ConfigDict()\n    return c.nope\n",
            "bad.py:5: AttributeError",
        ),
        ("x = 1\n", "defines no get_config(variant) function"),
    ],
)
def test_config_file_mistakes_are_one_line_naming_the_file_and_line(tmp_path, body, message):
    from jaxtrans.config import load_file

    path = tmp_path / "bad.py"
    path.write_text(body)
    with pytest.raises(JaxtransError) as e:
        load_file(str(path))
    assert message in str(e.value) and "\n" not in str(e.value), str(e.value)


def test_a_config_file_syntax_error_is_one_line_from_the_command(tmp_path):
    path = tmp_path / "bad.py"
    path.write_text("def get_config(:\n")
    done = subprocess.run([sys.executable, "-m", "jaxtrans.main", f"--config={path}"], cwd=REPO, env=ENV,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 2 and f"config file {path}:1: syntax error" in _error_line(done)


def test_another_models_tokenizer_is_refused_before_any_weight_is_read(smol_tiny, shared_data, tmp_path, monkeypatch):
    import shutil

    from jaxtrans import pretrained

    model = str(tmp_path / "model")
    shutil.copytree(
        smol_tiny, model, ignore=shutil.ignore_patterns("tokenizer*", "special_tokens*", "vocab*", "merges*")
    )
    shutil.copy(os.path.join(shared_data, "tokenizer-llama2", "tokenizer.model"), model)
    pretrained.check_tokenizer(smol_tiny)  # its own tokenizer fits

    def boom(*_, **__):
        raise AssertionError("weights were read")

    monkeypatch.setattr(pretrained, "load_params", boom)
    with pytest.raises(JaxtransError, match=r"covers 32000 of the model's 49152 rows, so it is probably another"):
        pretrained.check_tokenizer(model)
    pretrained.check_tokenizer(model, allow_mismatch=True)


def test_truncated_or_corrupt_weight_and_adapter_files_are_one_line(smol_tiny, tmp_path):
    import shutil

    from jaxtrans.export import import_peft
    from jaxtrans.pretrained import load_pretrained
    from jaxtrans.weights.tensors import check_safetensors

    model = str(tmp_path / "model")
    shutil.copytree(smol_tiny, model)
    weights = os.path.join(model, "model.safetensors")
    size = os.path.getsize(weights)
    with open(weights, "r+b") as f:
        f.truncate(size - 100)
    with pytest.raises(JaxtransError, match="model.safetensors is truncated: its tensors need"):
        load_pretrained(model)
    with open(weights, "r+b") as f:
        f.seek(8)
        f.write(b"{not json")
    with pytest.raises(JaxtransError, match="is not a readable safetensors file"):
        check_safetensors(weights)
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{truncated")
    (adapter / "adapter_model.safetensors").write_bytes(b"\x00" * 4)
    with pytest.raises(JaxtransError, match="adapter_config.json is not valid JSON"):
        import_peft(str(adapter), None)
    (adapter / "adapter_config.json").write_text('{"peft_type": "LORA", "r": 2, "lora_alpha": 4}')
    with pytest.raises(JaxtransError, match="adapter_model.safetensors is not a readable safetensors file"):
        import_peft(str(adapter), None)


@pytest.mark.parametrize(
    "module, argv, message",
    [
        ("jaxtrans.eval.__main__", ["--out", "{tmp}/ev"], "nothing to measure: give at least one of --target_text"),
        ("jaxtrans.eval.__main__", ["--out", "{tmp}/file/ev", "--en_prompts", "{tmp}/file"], "which is a file"),
        ("jaxtrans.eval.__main__", ["--out", "{tmp}/ev", "--limit", "0"], "--limit=0 must be a finite number >= 1"),
        ("jaxtrans.chat", ["--max_new_tokens", "-3", "--prompt", "hi"], "--max_new_tokens=-3 must be a finite number"),
        ("jaxtrans.export.__main__", ["--run", "{tmp}", "--merged", "{tmp}/file/merged"], "which is a file"),
        ("jaxtrans.vocab.__main__", ["extend", "--base", "embedded:smollm2", "--corpus", "{tmp}/file", "--language",
                                     "th", "--new-tokens", "100", "--pad-to", "-7", "--out", "{tmp}/tok"],
         "pad_to_multiple=-7 is negative"),
    ],
)  # fmt: skip
def test_command_line_tools_refuse_bad_values_in_one_line(tmp_path, capsys, module, argv, message):
    import importlib

    (tmp_path / "file").write_text("a line\n")
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    with pytest.raises(SystemExit) as e:
        importlib.import_module(module).main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not os.path.exists(tmp_path / "tok") and not os.path.exists(tmp_path / "ev")


def test_long_pretraining_documents_are_split_into_rows_not_cut():
    from jaxtrans.data.mixture import Component, Language, encode

    class Tok:  # one token per character, no specials
        bos_token_id = eos_token_id = pad_token_id = None

        def __call__(self, text, add_special_tokens=True):
            return {"input_ids": [ord(c) % 97 for c in text]}

    comp = Component.from_config("p.doc", {"kind": "pretrain", "source": {"path": "x.txt"}})
    doc = "x" * 1000
    examples, names = encode(comp, [{"text": doc, "_where": "x.txt:1"}], Tok(), Language(), seq_len=64)
    assert sum(len(ids) - 1 for ids, _ in examples) == len(doc) - 1  # every target kept
    assert max(len(ids) for ids, _ in examples) == 65 and names == ["x.txt:1"] * len(examples)


def test_a_qlora_run_measures_the_nf4_base_apart_from_the_original(smol_tiny, shared_data, tmp_path):
    """The baseline a QLoRA run must beat is the NF4 base, not the float original: both are in the report."""
    out = str(tmp_path / "run")
    _main(f"{smol_tiny},qlora", out)
    points = {p["label"]: p for p in _report(out)["points"]}
    assert list(points) == ["0_base", "0_base_nf4", "1_a", "2_b"]
    base, nf4 = points["0_base"]["target_nats_per_char"], points["0_base_nf4"]["target_nats_per_char"]
    assert base != nf4 and abs(base - nf4) / base < 0.5  # quantisation moved it, a little
    assert points["0_base_nf4"]["state"] == "base+nf4"
    report = open(os.path.join(out, "report.md"), encoding="utf-8").read()
    assert "| 0_base_nf4 |" in report and "## Outcome" in report
    # the Outcome separates the quantisation cost from what training did
    assert f"the NF4 base with untrained adapters (QLoRA's starting point) {nf4:.4g}: the quantisation costs" in report


def test_a_branch_starts_from_the_stage_it_names(smol_tiny, shared_data, tmp_path):
    """``start_from`` (an ablation from the same state): stage c starts where a ended, not where b did; a
    start_from naming a later or unknown stage is refused before any weight is read."""
    out = str(tmp_path / "run")
    _main(f"{smol_tiny},branch", out)
    stages = _report(out)["stages"]
    assert stages["c"]["digest_in"] == stages["a"]["digest_out"] != stages["b"]["digest_out"]
    bad = _main(f"{smol_tiny},branch", str(tmp_path / "bad"), "--config.stages.a.start_from=c", code=2)
    assert "stages.a.start_from='c' must name a train stage before it" in _error_line(bad)


def test_text_in_another_script_is_refused_before_any_weight_is_read(smol_tiny, shared_data, tmp_path):
    """Thai sentence pairs declared as Nepali: one line naming the stage, the component and the file."""
    out = str(tmp_path / "run")
    done = _main(smol_tiny, out, "--config.language.code=ne", "--config.language.name=Nepali", code=2)
    line = _error_line(done)
    assert "stage 'a', data component 'a.pairs'" in line and "talpco_en_th.jsonl" in line
    assert "% of its" in line and "letters are Devanagari" in line
    assert "loaded" not in done.stdout  # refused before the model was read
