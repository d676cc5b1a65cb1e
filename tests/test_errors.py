"""Bad input fails early with one clear line naming the problem."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from safetensors.numpy import load_file, save_file

import jaxtrans
from jaxtrans.errors import JaxtransError
from tests.conftest import REPO, tiny_hf_model


def test_missing_model_dir(tmp_path):
    with pytest.raises(JaxtransError, match="does not exist"):
        jaxtrans.load_pretrained(str(tmp_path / "nope"))


def test_dir_without_config(tmp_path):
    with pytest.raises(JaxtransError, match="has no config.json"):
        jaxtrans.load_pretrained(str(tmp_path))


def test_unsupported_model_type(tmp_path):
    _, path = tiny_hf_model(tmp_path)
    cfg = json.load(open(os.path.join(path, "config.json")))
    cfg["model_type"] = "gpt2"
    json.dump(cfg, open(os.path.join(path, "config.json"), "w"))
    with pytest.raises(JaxtransError, match="unsupported model_type 'gpt2'"):
        jaxtrans.load_pretrained(path, with_tokenizer=False)


def _sharded_model(tmp_path):
    model, _ = tiny_hf_model(tmp_path)
    path = str(tmp_path / "sharded")
    model.save_pretrained(path, max_shard_size="40KB")
    index = json.load(open(os.path.join(path, "model.safetensors.index.json")))
    assert len(set(index["weight_map"].values())) > 1
    return path, index["weight_map"]


def test_shard_missing_a_tensor(tmp_path):
    path, weight_map = _sharded_model(tmp_path)
    name = "model.layers.1.mlp.up_proj.weight"
    shard = os.path.join(path, weight_map[name])
    tensors = load_file(shard)
    del tensors[name]
    save_file(tensors, shard, metadata={"format": "pt"})
    with pytest.raises(JaxtransError, match=f"missing tensor '{name}'"):
        jaxtrans.load_pretrained(path, with_tokenizer=False)


def test_tensor_with_wrong_shape(tmp_path):
    path, weight_map = _sharded_model(tmp_path)
    name = "model.layers.0.self_attn.k_proj.weight"
    shard = os.path.join(path, weight_map[name])
    tensors = load_file(shard)
    tensors[name] = tensors[name][:-1]
    save_file(tensors, shard, metadata={"format": "pt"})
    with pytest.raises(JaxtransError, match=rf"'{name}' has shape \(31, 64\), expected \(32, 64\)"):
        jaxtrans.load_pretrained(path, with_tokenizer=False)


def test_pickle_weights_are_refused(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (tmp_path / "pytorch_model.bin").write_bytes(b"not read")
    with pytest.raises(JaxtransError, match="never unpickles"):
        jaxtrans.load_pretrained(str(tmp_path), with_tokenizer=False)


def _main(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "jaxtrans.main", *args], cwd=REPO, capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize(
    "args, message",
    [
        (["--config", "configs/missing.py"], "config file configs/missing.py does not exist"),
        (
            ["--config", "configs/thai.py", "--config.model.pth=x"],
            "config key 'model.pth' does not exist; did you mean model.path?",
        ),
        (
            ["--config", "configs/thai.py", "--config.eval.max_new_tokens=abc"],
            "bad command line: flag --config.eval.max_new_tokens=abc",
        ),
        (["--config", "configs/thai.py", "--config.model.dtype=float8"], "model.dtype='float8' is not one of"),
        (
            ["--config", "configs/thai.py", "--config.model.path=/no/such/model"],
            "model path /no/such/model does not exist",
        ),
        (["--config", "configs/thai.py:nope"], "unknown variant 'nope'"),
    ],
)
def test_cli_errors_are_one_line(args, message):
    result = _main(*args)
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("jaxtrans: error:")]
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert "Traceback" not in result.stderr
