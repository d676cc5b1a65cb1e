"""Issue #34: no command writes into what it reads; the user's command and the exact line it gets."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys

import pytest

from tests.conftest import REPO


def _tree_digest(root: str) -> str:
    """Every file's relative path and bytes under ``root``: equal digests mean the folder is intact, byte for byte."""
    h = hashlib.sha256()
    for folder, dirs, files in sorted(os.walk(root)):
        dirs.sort()
        for name in sorted(files):
            path = os.path.join(folder, name)
            h.update(os.path.relpath(path, root).encode())
            with open(path, "rb") as f:
                h.update(f.read())
    return h.hexdigest()


def _run(module: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)  # fmt: skip


def _one_line(done: subprocess.CompletedProcess, message: str) -> None:
    assert done.returncode == 2, done.stderr[-2000:]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], done.stderr[-2000:]


def test_a_run_into_the_models_own_folder_is_refused_and_the_model_is_intact(smol_tiny, tmp_path):
    model = str(tmp_path / "model")
    shutil.copytree(smol_tiny, model)
    before = _tree_digest(model)
    done = _run("jaxtrans.main", "--config", "configs/thai.py", f"--config.model.path={model}",
                f"--config.output_dir={model}")  # fmt: skip
    _one_line(done, f"output_dir {model} is model.path {model}, which this command reads, and writing there could "
                    "overwrite it; choose a folder apart from it")  # fmt: skip
    assert _tree_digest(model) == before
    # inside it, or holding it, is refused the same way
    done = _run("jaxtrans.main", "--config", "configs/thai.py", f"--config.model.path={model}",
                f"--config.output_dir={tmp_path}")  # fmt: skip
    _one_line(done, f"output_dir {tmp_path} contains model.path {model}")
    assert _tree_digest(model) == before


def _fake_run(root) -> str:
    """A finished run's files as export reads them (the refusal comes before any of them is parsed as weights)."""
    run = root / "run"
    (run / "export" / "peft").mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"model": {"path": "embedded:smollm2"}}))
    (run / "export" / "peft" / "adapter_config.json").write_text("{}")
    (run / "stages" / "a" / "checkpoints").mkdir(parents=True)
    (run / "stages" / "a" / "checkpoints" / "1").write_text("state")
    (run / "report.md").write_text("# report\n")
    return str(run)


def test_exporting_over_its_own_run_is_refused_and_the_run_is_intact(tmp_path):
    run = _fake_run(tmp_path)
    before = _tree_digest(run)
    peft = os.path.join(run, "export", "peft")
    cases = [
        (["--merged", run, "--overwrite"], f"--merged {run} contains the run's adapter {peft}, which this command"),
        (["--merged", os.path.join(run, "export"), "--overwrite"], "contains the run's adapter"),
        (["--peft", peft, "--overwrite"], f"--peft {peft} is the run's adapter {peft}"),
        (["--merged", os.path.join(peft, "m")], f"--merged {peft}/m is inside the run's adapter {peft}"),
        (["--merged", str(tmp_path / "m"), "--peft", str(tmp_path / "m" / "p")], "contains --peft"),
    ]
    for args, message in cases:
        _one_line(_run("jaxtrans.export", "--run", run, *args), message)
        assert _tree_digest(run) == before, args
    # through a symlink too
    os.symlink(run, tmp_path / "link")
    _one_line(_run("jaxtrans.export", "--run", run, "--merged", str(tmp_path / "link"), "--overwrite"),
              "contains the run's adapter")  # fmt: skip
    assert _tree_digest(run) == before


@pytest.mark.parametrize(
    "module, argv, message",
    [
        ("jaxtrans.vocab", ["extend", "--base", "{model}", "--corpus", "{text}", "--out", "{model}", "--overwrite"],
         "--out {model} is --base {model}, which this command reads"),
        ("jaxtrans.vocab", ["extend", "--base", "embedded:smollm2", "--corpus", "{text}", "--out", "{tmp}",
                            "--overwrite"], "--out {tmp} contains --corpus {text}"),
        ("jaxtrans.eval", ["--model", "{model}", "--target_text", "{text}", "--out", "{model}/eval"],
         "--out {model}/eval is inside --model {model}"),
        ("jaxtrans.eval.harness", ["--model", "{model}", "--tasks", "x", "--out", "{model}"],
         "--out {model} is --model {model}"),
    ],
)  # fmt: skip
def test_every_writer_refuses_its_own_inputs(smol_tiny, tmp_path, module, argv, message):
    model = str(tmp_path / "model")
    shutil.copytree(smol_tiny, model)
    text = tmp_path / "th.txt"
    text.write_text("สวัสดีครับ\n" * 10)
    subst = {"model": model, "text": str(text), "tmp": str(tmp_path)}
    before = _tree_digest(str(tmp_path))
    _one_line(_run(module, *[a.format(**subst) for a in argv]), message.format(**subst))
    assert _tree_digest(str(tmp_path)) == before


# ---------------------------------------------------------------- SIGTERM in every command


def _catches_sigterm(pid: int) -> bool:
    """Whether process ``pid`` has a SIGTERM handler installed (bit 15 of SigCgt in /proc/PID/status)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            mask = next(int(line.split()[1], 16) for line in f if line.startswith("SigCgt:"))
    except (OSError, StopIteration):
        return False
    return bool(mask >> (signal.SIGTERM - 1) & 1)


def _stopped_at_random_moments(argv: list[str], out: str, resumes: bool, tries: int = 3) -> list[tuple[float, int]]:
    """Run ``argv`` whole (timing its second run), then ``tries`` times with SIGTERM at random moments of its work.

    Each stopped run must exit 75 in one line with no staging folder left, and either nothing written or (for
    a command that ``resumes``, keeping what it finished) a re-run that completes; a run the signal missed must
    have finished whole. Returns (moment, exit code) per try."""
    import random
    import time

    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    parent = os.path.dirname(out)
    for _ in range(2):  # timed warm: the first run fills the compilation cache, which makes every later run faster
        start = time.time()
        whole = subprocess.run([sys.executable, *argv], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
        duration = time.time() - start
        assert whole.returncode == 0 and os.path.exists(out), whole.stderr[-2000:]
        shutil.rmtree(out)
    rng, outcomes = random.Random(0), []
    for i in range(tries):
        proc = subprocess.Popen([sys.executable, *argv], cwd=REPO, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)  # fmt: skip
        started = time.time()
        while not _catches_sigterm(proc.pid) and proc.poll() is None and time.time() - started < 60:
            time.sleep(0.005)  # start-up (importing jax) is over once the command's handler is in place
        share = 0.1 if i == tries - 1 else rng.uniform(0, 1)  # random moments, and one early in the work
        moment = share * max(duration - (time.time() - started), 0.2)
        time.sleep(moment)
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=120)
        staging = [d for d in os.listdir(parent) if d.startswith(".")]
        assert not staging, staging
        if proc.returncode == 75:
            assert stderr.strip().splitlines()[-1].startswith("jaxtrans: stopped by SIGTERM"), stderr[-2000:]
            assert "Traceback" not in stderr, stderr[-2000:]
            if resumes:
                again = subprocess.run([sys.executable, *argv], cwd=REPO, env=env, capture_output=True, text=True,
                                       timeout=300)  # fmt: skip
                assert again.returncode == 0, again.stderr[-2000:]
                shutil.rmtree(out)
            else:
                assert not os.path.exists(out)
        else:
            assert proc.returncode == 0 and os.path.exists(out), (argv[:3], moment, proc.returncode, stderr[-2000:])
            shutil.rmtree(out)
        outcomes.append((round(moment, 2), proc.returncode))
    assert 75 in [code for _, code in outcomes], outcomes
    return outcomes


def test_sigterm_stops_export_vocab_extend_and_eval_with_nothing_half_written(smol_tiny, tmp_path):
    text = tmp_path / "th.txt"
    text.write_text("".join(f"ภาษาไทย ประโยคที่ {i} สวัสดีครับ ขอบคุณมาก\n" for i in range(300)))
    peft = _adapter(smol_tiny, tmp_path)
    commands = {
        "export": (["-m", "jaxtrans.export", "--model", smol_tiny, "--adapter", peft, "--merged"], "merged", False),
        "vocab extend": (["-m", "jaxtrans.vocab", "extend", "--base", smol_tiny, "--corpus", str(text),
                          "--new-tokens", "64", "--out"], "tok", False),
        "eval": (["-m", "jaxtrans.eval", "--model", smol_tiny, "--adapter", peft, "--target_text", str(text),
                  "--limit", "8", "--max_new_tokens", "4", "--out"], "eval", True),
    }  # fmt: skip
    seen = {}
    for name, (argv, folder, resumes) in commands.items():
        out = str(tmp_path / "outs" / folder)
        os.makedirs(os.path.dirname(out), exist_ok=True)
        seen[name] = _stopped_at_random_moments([*argv, out], out, resumes)
    print("SIGTERM (moment s, exit code):", seen)


def _adapter(model: str, tmp_path) -> str:
    """A PEFT adapter for ``model`` (LoRA B non-zero, as if trained), written by the library."""
    import jax
    import numpy as np

    import jaxtrans
    from jaxtrans.export import export_peft
    from jaxtrans.model import llama
    from jaxtrans.model.lora import LoraConfig

    loaded, tok = jaxtrans.load_pretrained(model)
    adapters = llama.Adapters(lora=LoraConfig.make(4, 8, targets="q,v"))
    trainable = jax.device_get(llama.init_trainable(loaded.config, adapters, 0))
    rng = np.random.default_rng(0)
    trainable = jax.tree_util.tree_map_with_path(
        lambda p, x: rng.normal(0, 0.05, x.shape).astype(x.dtype) if p[-1].key == "b" else np.asarray(x), trainable
    )
    return export_peft(str(tmp_path / "adapter"), loaded.config, trainable, adapters, model, tokenizer=tok)


# ---------------------------------------------------------------- damaged run directories, late failures


def test_a_damaged_state_file_is_one_line_naming_it_and_the_fix(tmp_path):
    from jaxtrans.curriculum.state import read_json
    from jaxtrans.errors import JaxtransError

    path = tmp_path / "stages" / "a" / "fingerprint.json"
    path.parent.mkdir(parents=True)
    path.write_text('{"fingerprint": {"seed": 0')  # cut short by a full disk
    with pytest.raises(JaxtransError) as e:
        read_json(str(path))
    assert str(e.value) == (
        f"{path} is damaged (not valid JSON at line 1); restore it from a copy, or delete {path.parent} to redo "
        "what it records"
    )


def test_a_stage_that_fails_before_producing_anything_keeps_no_fingerprint(smol_tiny, tmp_path):
    """A failure after the fingerprint is written (here: no disk space for the first checkpoint) must not make
    the corrected command be refused as 'made with other settings'."""
    from jaxtrans.curriculum import identity, train

    out = str(tmp_path / "run")
    assert identity.record(out, "a", {"seed": 0}) is True
    assert identity.record(out, "a", {"seed": 0}) is False  # already there: not fresh
    assert not train.produced(out, "a")
    os.makedirs(os.path.join(out, "stages", "a", "checkpoints", "3.orbax-checkpoint-tmp-1"))  # half-written
    assert not train.produced(out, "a")
    os.makedirs(os.path.join(out, "stages", "a", "checkpoints", "2"))
    assert train.produced(out, "a")


def test_a_stage_that_would_train_on_no_token_is_refused_before_the_model_loads(smol_tiny, tmp_path):
    """seq_len=8 cuts every translation answer away: the stage would train on nothing (it used to exit 0)."""
    out = str(tmp_path / "run")
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
    cmd = [sys.executable, "-m", "jaxtrans.main", f"--config=tests/tiny_two_stages.py:{smol_tiny}",
           f"--config.output_dir={out}"]  # fmt: skip
    done = subprocess.run([*cmd, "--config.stages.a.seq_len=8"], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=600)  # fmt: skip
    _one_line(done, "stage 'a', data component 'a.pairs': none of its first 64 examples keeps a trained token "
                    "within seq_len=8 (too_long=split); raise stages.a.seq_len, or fix the data")  # fmt: skip
    assert "loaded" not in done.stdout and not os.path.exists(out)
    fixed = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert fixed.returncode == 0, fixed.stderr[-2000:]
    with open(os.path.join(out, "report.json")) as f:
        assert json.load(f)["stages"]["a"]["steps_without_trained_tokens"] == 0


def test_steps_without_trained_tokens_are_counted_from_the_metrics(tmp_path):
    """What a stage the check above cannot see (answers generated later, a vocab-extended tokenizer) is measured
    by: every step with 0 trained tokens makes the stage an error (curriculum.train)."""
    from jaxtrans.curriculum.train import _empty_steps

    rows = [{"step": 1, "loss": 0.0, "tokens": 0}, {"step": 2, "loss": 1.0, "tokens": 12},
            {"step": 2, "loss": 0.0, "tokens": 0}, {"eval/x": 1.0, "step": 2}]  # fmt: skip
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert _empty_steps(str(tmp_path)) == 2  # a resumed run's rewrite of step 2 wins


def test_an_adapter_is_checked_against_the_base_it_names_and_an_empty_one_is_refused(smol_tiny, tmp_path):
    adapter = _adapter(smol_tiny, tmp_path)
    other = str(tmp_path / "other-base")
    shutil.copytree(smol_tiny, other)  # the same shapes under another name: a different model as far as we know
    for module, extra in (
        ("jaxtrans.export", ["--peft", str(tmp_path / "p")]),
        ("jaxtrans.eval", ["--target_text", str(tmp_path / "t.txt"), "--out", str(tmp_path / "e")]),
    ):
        (tmp_path / "t.txt").write_text("สวัสดีครับ\n")
        done = _run(module, "--model", other, "--adapter", adapter, *extra)
        _one_line(done, f"{adapter} was trained on {smol_tiny}, not {other}; give that model (--model {smol_tiny}), "
                        "or pass --allow_other_base if this is a copy of it under another name")  # fmt: skip
    done = _run("jaxtrans.export", "--model", other, "--adapter", adapter, "--peft", str(tmp_path / "p"),
                "--allow_other_base")  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 4, "lora_alpha": 8}))
    from safetensors.numpy import save_file

    save_file({}, str(empty / "adapter_model.safetensors"))
    done = _run("jaxtrans.export", "--model", smol_tiny, "--adapter", str(empty), "--merged", str(tmp_path / "m"))
    _one_line(done, f"{empty} holds no LoRA tensors and no new-token rows: the adapter is empty")
    assert not (tmp_path / "m").exists()
