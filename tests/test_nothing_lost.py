"""Issue #34: no command writes into what it reads; the user's command and the exact line it gets."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
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
