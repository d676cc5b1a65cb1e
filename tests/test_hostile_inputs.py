"""Issue #34's hostile-input script: bad input to every command, each run as a user would, each outcome classified.

Classes (as the issue counted them): *clear* (exit 2, one ``jaxtrans: error:`` line, before the model loaded, nothing
new written), *late* (clear, but after the model loaded), *traceback*, *silent* (exit 0 where a refusal was due),
*lost* (a model, run or data folder changed). The test asserts 0 traceback, 0 silent, 0 lost and 0 late, and prints
the table. Bounded: every case is one subprocess with a 120 s limit, two at a time.
"""

from __future__ import annotations

import collections
import concurrent.futures
import json
import os
import shutil
import subprocess
import sys

import pytest

from tests.conftest import REPO
from tests.test_nothing_lost import _adapter, _fake_run, _tree_digest

THAI = "configs/thai.py"
TWO = "tests/tiny_two_stages.py"


@pytest.fixture(scope="module")
def world(smol_tiny, shared_data, tmp_path_factory) -> dict[str, str]:
    """The folders every case may read (and must leave intact): a model, an adapter, a finished-looking run,
    data files good and bad."""
    root = tmp_path_factory.mktemp("hostile")
    model = str(root / "model")
    shutil.copytree(smol_tiny, model)
    no_tok = str(root / "no-tokenizer")
    os.makedirs(no_tok)
    for name in ("config.json", "model.safetensors"):
        shutil.copy(os.path.join(smol_tiny, name), no_tok)
    other_tok = str(root / "other-tokenizer")
    shutil.copytree(no_tok, other_tok)
    shutil.copy(os.path.join(shared_data, "tokenizer-llama2", "tokenizer.model"), other_tok)
    adapter = _adapter(model, root)
    data = root / "data"
    data.mkdir()
    files = {
        "good.jsonl": '{"en": "Hello.", "th": "สวัสดีครับ"}\n' * 20,
        "malformed.jsonl": '{"en": "Hello.", "th": "สวัสดี"\n',
        "no_column.jsonl": '{"english": "Hello.", "thai": "สวัสดี"}\n',
        "number.jsonl": '{"en": "Hello.", "th": 5}\n',
        "object.jsonl": '{"en": "Hello.", "th": {"a": 1}}\n',
        "surrogate.jsonl": '{"en": "Hello.", "th": "ok \\ud800"}\n',
        "deep.jsonl": '{"en": "Hello.", "th": ' + "[" * 50_000 + "]" * 50_000 + "}\n",
        "empty.jsonl": "",
        "blank.jsonl": "\n\n\n",
        "list.json": "[1, 2, 3]\n",
        "scalar.json": "5\n",
        "nepali.jsonl": '{"en": "Hello.", "th": "नमस्ते"}\n' * 20,
        "thai.txt": "สวัสดีครับ ภาษาไทย\n" * 50,
    }
    for name, text in files.items():
        (data / name).write_text(text, encoding="utf-8")
    (data / "latin1.jsonl").write_bytes('{"en": "Hello.", "th": "caf\xe9"}\n'.encode("latin-1"))
    (data / "parquet.parquet").write_text("not parquet\n")
    return {"model": model, "no_tok": no_tok, "other_tok": other_tok, "adapter": adapter, "run": _fake_run(root),
            "data": str(data), "out": str(root / "outputs"), "root": str(root)}  # fmt: skip


def _main(config: str, *overrides: str) -> list[str]:
    return ["-m", "jaxtrans.main", f"--config={config}", *overrides]


def _pairs(world: dict, name: str) -> list[str]:
    """The two-stage tiny run with stage a's pairs read from ``data/name``."""
    return _main(f"{TWO}:{world['model']}", f"--config.output_dir={world['out']}/run",
                 f"--config.stages.a.data.pairs.source.path={world['data']}/{name}")  # fmt: skip


def _cases(w: dict) -> list[tuple[str, list[str]]]:
    """(what, argv): every case must be refused in one line, before any weight is read."""
    thai = lambda *o: _main(THAI, f"--config.output_dir={w['out']}/thai", *o)  # noqa: E731
    mdl = ["--model", w["model"]]
    out = ["--out", f"{w['out']}/o"]
    cases = [
        # run config values
        ("learning rate negative", thai("--config.stages.pretrain.learning_rate=-0.01")),
        ("learning rate nan", thai("--config.stages.pretrain.learning_rate=nan")),
        ("learning rate zero", thai("--config.stages.pretrain.learning_rate=0")),
        ("new rows rate inf", thai("--config.stages.pretrain.new_rows_learning_rate=inf")),
        ("schedule misspelt", thai("--config.stages.pretrain.schedule=cosin")),
        ("too_long unknown", thai("--config.stages.pretrain.too_long=cut")),
        ("save_every zero", thai("--config.stages.pretrain.save_every=0")),
        ("steps zero", thai("--config.stages.pretrain.steps=0")),
        ("eval_every negative", thai("--config.stages.pretrain.eval_every=-1")),
        ("warmup negative", thai("--config.stages.pretrain.warmup_steps=-1")),
        ("seq_len one", thai("--config.stages.pretrain.seq_len=1")),
        ("end_lr_ratio above one", thai("--config.stages.pretrain.end_lr_ratio=2.0")),
        ("skip_nonfinite negative", thai("--config.stages.pretrain.skip_nonfinite_steps=-1")),
        ("weight decay nan", thai("--config.stages.pretrain.weight_decay=nan")),
        ("source limit negative", thai("--config.stages.pretrain.data.thai.source.limit=-5")),
        ("component weight nan", thai("--config.stages.pretrain.data.thai.weight=nan")),
        ("component weight zero", thai("--config.stages.pretrain.data.thai.weight=0")),
        ("divergence unknown", thai("--config.stages.transfer.distill_divergence=kld")),
        ("remat misspelt", thai("--config.model.remat=ful")),
        ("dtype unknown", thai("--config.model.dtype=float8")),
        ("attention unknown", thai("--config.model.attention=magic")),
        ("generation tokens negative", thai("--config.generation.max_new_tokens=-3")),
        ("restart_from misspelt", thai("--config.restart_from=pretrian")),
        ("seed negative", thai("--config.seed=-1")),
        ("seed not a number", thai("--config.seed=abc")),
        ("lora alpha nan", thai("--config.lora.alpha=nan")),
        ("lora rank zero", thai("--config.lora.rank=0")),
        ("lora dropout one", thai("--config.lora.dropout=1.0")),
        ("lora targets unknown", thai("--config.lora.targets=qq")),
        ("quantize_head without quantized", thai("--config.lora.quantize_head=True")),
        ("host embedding with a tied head", thai("--config.lora.host_embedding=True")),
        ("mesh zero", thai("--config.mesh.data=0")),
        ("config key unknown", thai("--config.model.pth=x")),
        ("config file missing", _main("configs/nope.py")),
        ("unexpected argument", [*thai(), "extra"]),
        ("output_dir empty", _main(THAI, "--config.output_dir=")),
        ("output_dir a file", _main(THAI, "--config.output_dir=/proc/version")),
        ("output_dir under a file", _main(THAI, "--config.output_dir=/proc/version/run")),
        # the run's own folders
        ("output_dir is the model", _main(f"{TWO}:{w['model']}", f"--config.output_dir={w['model']}")),
        ("output_dir holds the model", _main(f"{TWO}:{w['model']}", f"--config.output_dir={w['root']}")),
        ("output_dir holds the data", [*_pairs(w, "good.jsonl"), f"--config.output_dir={w['data']}"]),
        ("model folder missing", _main(f"{TWO}:{w['root']}/nope", f"--config.output_dir={w['out']}/r")),
        ("model without tokenizer", _main(f"{TWO}:{w['no_tok']}", f"--config.output_dir={w['out']}/r")),
        ("another model's tokenizer", _main(f"{TWO}:{w['other_tok']}", f"--config.output_dir={w['out']}/r")),
        # data
        ("data file missing", _pairs(w, "missing.jsonl")),
        ("malformed JSON line", _pairs(w, "malformed.jsonl")),
        ("column missing", _pairs(w, "no_column.jsonl")),
        ("number for text", _pairs(w, "number.jsonl")),
        ("object for text", _pairs(w, "object.jsonl")),
        ("lone surrogate", _pairs(w, "surrogate.jsonl")),
        ("JSON nested too deep", _pairs(w, "deep.jsonl")),
        ("empty file", _pairs(w, "empty.jsonl")),
        ("blank lines only", _pairs(w, "blank.jsonl")),
        ("JSON list of numbers", _pairs(w, "list.json")),
        ("JSON scalar", _pairs(w, "scalar.json")),
        ("not UTF-8", _pairs(w, "latin1.jsonl")),
        ("not parquet", _pairs(w, "parquet.parquet")),
        ("text in another script", _pairs(w, "nepali.jsonl")),
        ("no trained token at seq_len", [*_pairs(w, "good.jsonl"), "--config.stages.a.seq_len=4"]),
        # export
        ("export over its run", ["-m", "jaxtrans.export", "--run", w["run"], "--merged", w["run"], "--overwrite"]),
        ("export over the adapter", ["-m", "jaxtrans.export", *mdl, "--adapter", w["adapter"], "--peft", w["adapter"],
                                     "--overwrite"]),
        ("export with nothing to write", ["-m", "jaxtrans.export", "--run", w["run"]]),
        ("export from a non-run", ["-m", "jaxtrans.export", "--run", w["data"], "--merged", f"{w['out']}/m"]),
        ("export without adapter", ["-m", "jaxtrans.export", *mdl, "--merged", f"{w['out']}/m"]),
        ("export over an existing folder", ["-m", "jaxtrans.export", *mdl, "--adapter", w["adapter"], "--merged",
                                            w["data"]]),
        ("export with another base", ["-m", "jaxtrans.export", "--model", w["other_tok"], "--adapter", w["adapter"],
                                      "--merged", f"{w['out']}/m"]),
        ("export of a missing adapter", ["-m", "jaxtrans.export", *mdl, "--adapter", f"{w['root']}/nope", "--merged",
                                         f"{w['out']}/m"]),
        # vocab extend
        ("vocab over its base", ["-m", "jaxtrans.vocab", "extend", "--base", w["model"], "--corpus",
                                 f"{w['data']}/thai.txt", "--out", w["model"], "--overwrite"]),
        ("vocab corpus missing", ["-m", "jaxtrans.vocab", "extend", "--base", w["model"], "--corpus",
                                  f"{w['data']}/missing.txt", *out]),
        ("vocab corpus malformed", ["-m", "jaxtrans.vocab", "extend", "--base", w["model"], "--corpus",
                                    f"{w['data']}/malformed.jsonl", *out]),
        ("vocab language unknown", ["-m", "jaxtrans.vocab", "extend", "--base", w["model"], "--corpus",
                                    f"{w['data']}/thai.txt", "--language", "xx", *out]),
        ("vocab no room", ["-m", "jaxtrans.vocab", "extend", "--base", w["model"], "--corpus",
                           f"{w['data']}/thai.txt", "--new-tokens", "2", *out]),
        # eval, harness, chat
        ("eval into the model", ["-m", "jaxtrans.eval", *mdl, "--target_text", f"{w['data']}/thai.txt", "--out",
                                 f"{w['model']}/eval"]),
        ("eval with nothing to measure", ["-m", "jaxtrans.eval", *mdl, *out]),
        ("eval data missing", ["-m", "jaxtrans.eval", *mdl, "--target_text", f"{w['data']}/missing.txt", *out]),
        ("eval limit zero", ["-m", "jaxtrans.eval", *mdl, "--target_text", f"{w['data']}/thai.txt", "--limit", "0",
                             *out]),
        ("eval with another base", ["-m", "jaxtrans.eval", "--model", w["other_tok"], "--adapter", w["adapter"],
                                    "--target_text", f"{w['data']}/thai.txt", *out]),
        ("harness task unknown", ["-m", "jaxtrans.eval.harness", *mdl, "--tasks", "no_such_task", *out]),
        ("harness into the model", ["-m", "jaxtrans.eval.harness", *mdl, "--tasks", "x", "--out", w["model"]]),
        ("harness include_path missing", ["-m", "jaxtrans.eval.harness", *mdl, "--tasks", "x", "--include_path",
                                          f"{w['root']}/nope", *out]),
        ("chat tokens zero", ["-m", "jaxtrans.chat", *mdl, "--max_new_tokens", "0", "--prompt", "hi"]),
        ("chat adapter missing", ["-m", "jaxtrans.chat", *mdl, "--adapter", f"{w['root']}/nope", "--prompt", "hi"]),
    ]  # fmt: skip
    return cases


def _classify(done: subprocess.CompletedProcess) -> str:
    if "Traceback" in done.stderr or done.returncode not in (0, 2, 75):
        return "traceback"
    if done.returncode == 0:
        return "silent"
    lines = done.stderr.strip().splitlines()
    if len(lines) != 1 or not lines[0].startswith("jaxtrans: error:"):
        return "unclear"
    return "late" if done.stdout.startswith("loaded ") or "\nloaded " in done.stdout else "clear"


def test_hostile_inputs_are_all_refused_clearly_and_nothing_is_lost(world):
    cases = _cases(world)
    assert len(cases) >= 60
    protected = [world[k] for k in ("model", "no_tok", "other_tok", "adapter", "run", "data")]
    before = {p: _tree_digest(p) for p in protected}
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_force_host_platform_device_count=4",
           "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}  # fmt: skip

    def one(case: tuple[str, list[str]]) -> tuple[str, subprocess.CompletedProcess]:
        return case[0], subprocess.run([sys.executable, *case[1]], cwd=REPO, env=env, capture_output=True, text=True,
                                       timeout=120)  # fmt: skip

    results = []
    with concurrent.futures.ThreadPoolExecutor(2) as pool:  # two at a time: cases only read, each its own output
        for what, done in pool.map(one, cases):
            results.append((what, done))
    table = collections.Counter()
    bad = []
    for what, done in results:
        verdict = _classify(done)
        table[verdict] += 1
        if verdict != "clear":
            bad.append((what, verdict, done.returncode, done.stderr.strip()[-600:]))
    changed = [p for p in protected if _tree_digest(p) != before[p]]
    table["lost"] = len(changed)
    written = [e.path for e in os.scandir(world["out"])] if os.path.isdir(world["out"]) else []
    print(f"{len(cases)} cases:", json.dumps(dict(table)), *(f"{w}: {v} (exit {c}) {e}" for w, v, c, e in bad),
          sep="\n")  # fmt: skip
    assert not bad, bad
    assert not changed, f"folders changed: {changed}"
    assert not written, f"refused commands wrote {written}"
