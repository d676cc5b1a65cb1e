"""Log-likelihoods equal transformers'; lm-evaluation-harness on a jaxtrans model equals its own HF backend."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
import torch

import jaxtrans
from jaxtrans.eval.loglik import loglikelihood, rolling_loglikelihood, token_logprobs
from jaxtrans.export import export_merged
from jaxtrans.model import llama
from jaxtrans.model.lora import LoraConfig
from jaxtrans.view import ModelView
from tests.choice_data import talpco, write_choice_file
from tests.conftest import REPO, tiny_hf_model

NEW = 5


def _adapted(cfg, new_tokens, seed=0):
    """LoRA on every projection with B random (as if trained), plus random new-token rows."""
    adapters = llama.Adapters(lora=LoraConfig.make(4, 8, targets="q,k,v,o,gate,up,down"), new_tokens=new_tokens)
    t = jax.device_get(llama.init_trainable(cfg, adapters, seed))
    rng = np.random.default_rng(seed)
    t = jax.tree_util.tree_map_with_path(
        lambda p, x: rng.normal(0, 0.02, x.shape).astype(x.dtype) if p[-1].key == "b" else np.asarray(x), t
    )
    if "new_rows" in t:
        t["new_rows"] = {k: rng.normal(0, 0.05, v.shape).astype(np.float32) for k, v in t["new_rows"].items()}
    return adapters, t


def _reference_logprobs(hf, seqs):
    out = []
    with torch.no_grad():
        for s in seqs:
            logits = hf(torch.tensor([s])).logits[0].double()
            lp = torch.log_softmax(logits, -1)[:-1].gather(-1, torch.tensor(s[1:])[:, None])[:, 0]
            out.append(lp.numpy())
    return out


@pytest.fixture(scope="module")
def smollm2():
    model, tok = jaxtrans.load_pretrained("embedded:smollm2")
    return model, tok


def _requests(tok, extra_ids=()):
    texts = [("The capital of Thailand is", " Bangkok."), ("Question: 2 + 2 =", " 4"), ("สวัสดี", "ครับ ยินดีที่ได้รู้จัก")]
    reqs = [(tok.encode(c), tok.encode(c + x)[len(tok.encode(c)) :]) for c, x in texts]
    if extra_ids:
        reqs.append((tok.encode("New tokens:"), list(extra_ids)))
    return reqs


def test_loglikelihoods_equal_transformers_on_smollm2(smollm2):
    from transformers import AutoModelForCausalLM

    from jaxtrans.pretrained import resolve

    model, tok = smollm2
    view = ModelView(model.config, llama.Adapters(), {"params": model.params}, tok)
    reqs = _requests(tok)
    seqs = [c + x for c, x in reqs]
    path = resolve("embedded:smollm2").path
    hf = AutoModelForCausalLM.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path),
                                              dtype=torch.float32).eval()  # fmt: skip
    ref = _reference_logprobs(hf, seqs)
    ours = token_logprobs(view, seqs, batch=2)
    diff = max(np.abs(o[0] - r).max() for o, r in zip(ours, ref, strict=True))
    print(f"max per-token |jaxtrans - transformers| log-prob: {diff:.2e}")
    assert diff <= 1e-4
    sums = loglikelihood(view, reqs)
    for (lp, _), r, (_, cont) in zip(sums, ref, reqs, strict=True):
        assert abs(lp - r[-len(cont) :].sum()) <= 1e-4 * len(cont)


def test_loglikelihoods_with_adapter_and_new_rows_equal_the_merged_export(smollm2, tmp_path):
    from transformers import AutoModelForCausalLM

    model, tok = smollm2
    cfg = model.config
    adapters, trainable = _adapted(cfg, NEW)
    view = ModelView(cfg, adapters, {"params": model.params, **trainable}, tok)
    reqs = _requests(tok, extra_ids=[cfg.vocab_size + 1, cfg.vocab_size + 4, 42])
    seqs = [c + x for c, x in reqs]
    out = export_merged(str(tmp_path / "merged"), cfg, model.params, trainable, adapters)
    hf = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    ref = _reference_logprobs(hf, seqs)
    ours = token_logprobs(view, seqs)
    diff = max(np.abs(o[0] - r).max() for o, r in zip(ours, ref, strict=True))
    print(f"adapter + {NEW} new rows: max per-token |jaxtrans - transformers| log-prob: {diff:.2e}")
    assert diff <= 1e-4
    base_only = token_logprobs(ModelView(cfg, llama.Adapters(), {"params": model.params}, tok), seqs[:1])
    assert np.abs(base_only[0][0] - ours[0][0]).max() > 1e-3  # the adapter matters
    # rolling log-likelihood in windows equals scoring the whole text at once when it fits
    text = seqs[0] + seqs[1]
    whole = token_logprobs(view, [[tok.eos_token_id, *text]])[0][0].sum()
    (rolled,) = rolling_loglikelihood(view, [text], tok.eos_token_id, max_len=1000)
    assert abs(rolled - whole) <= 1e-4
    (windowed,) = rolling_loglikelihood(view, [text], tok.eos_token_id, max_len=4)  # less context: lower
    assert windowed < whole


# ---------------------------------------------------------------- lm-evaluation-harness


TASKS = {
    "jt_choice": """task: jt_choice
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: choices
doc_to_target: answer
metric_list:
  - metric: acc
  - metric: acc_norm
""",
    "jt_generate": """task: jt_generate
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_text: "Translate into Thai: {{{{en}}}}\\nThai:"
doc_to_target: "{{{{th}}}}"
generation_kwargs:
  until: ["\\n"]
  max_gen_toks: 10
  do_sample: false
metric_list:
  - metric: exact_match
""",
}


@pytest.fixture(scope="module")
def harness_setup(shared_data, tmp_path_factory):
    """A tiny random Llama speaking SmolLM2's tokenizer, a LoRA adapter, its merged export, two local tasks."""
    from jaxtrans.vocab.base import load_tokenizer

    tmp = tmp_path_factory.mktemp("harness")
    tok = load_tokenizer("embedded:smollm2")
    _, path = tiny_hf_model(tmp, vocab_size=len(tok), max_position_embeddings=256, tie_word_embeddings=True)
    tok.save_pretrained(path)
    model, tok = jaxtrans.load_pretrained(path)
    adapters, trainable = _adapted(model.config, 0, seed=3)
    view = ModelView(model.config, adapters, {"params": model.params, **trainable}, tok)
    merged = export_merged(str(tmp / "merged"), model.config, model.params, trainable, adapters, tokenizer=tok)
    tasks = tmp / "tasks"
    tasks.mkdir()
    choice = write_choice_file(shared_data, str(tmp / "choice.jsonl"))
    gen = tmp / "generate.jsonl"
    gen.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in talpco(shared_data)[:6]))
    for name, data in (("jt_choice", choice), ("jt_generate", str(gen))):
        (tasks / f"{name}.yaml").write_text(TASKS[name].format(data=data))
    return {"view": view, "merged": merged, "tasks": str(tasks), "model_dir": path}


def _evaluate(model, tasks_dir, **kw):
    import lm_eval
    from lm_eval.tasks import TaskManager

    return lm_eval.simple_evaluate(model=model, tasks=["jt_choice", "jt_generate"], log_samples=True,
                                   task_manager=TaskManager(include_path=tasks_dir), **kw)  # fmt: skip


def test_lm_eval_on_jaxtrans_equals_its_hf_backend(harness_setup, monkeypatch):
    from jaxtrans.eval.lm_eval_model import JaxtransLM

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    s = harness_setup
    ours = _evaluate(JaxtransLM(view=s["view"], batch_size=4), s["tasks"])
    theirs = _evaluate("hf", s["tasks"], model_args=f"pretrained={s['merged']},dtype=float32", device="cpu")
    metrics = (("jt_choice", "acc,none"), ("jt_choice", "acc_norm,none"), ("jt_generate", "exact_match,none"))
    for task, metric in metrics:
        assert ours["results"][task][metric] == theirs["results"][task][metric], (task, metric)
    mine = {d["doc_id"]: d for d in ours["samples"]["jt_choice"]}
    for d in theirs["samples"]["jt_choice"]:
        a = np.array([float(x[0]) for x in mine[d["doc_id"]]["filtered_resps"]])
        b = np.array([float(x[0]) for x in d["filtered_resps"]])
        assert int(np.argmax(a)) == int(np.argmax(b))  # the same choice on every item
        assert np.abs(a - b).max() <= 1e-3
    gen_ours = {d["doc_id"]: d["filtered_resps"] for d in ours["samples"]["jt_generate"]}
    gen_theirs = {d["doc_id"]: d["filtered_resps"] for d in theirs["samples"]["jt_generate"]}
    assert gen_ours == gen_theirs and any(r[0] for r in gen_ours.values())  # same (non-empty) generations


def test_harness_cli(harness_setup, tmp_path):
    s = harness_setup
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "JAX_PLATFORMS": "cpu"}
    cmd = [sys.executable, "-m", "jaxtrans.eval.harness", "--model", s["model_dir"], "--include_path", s["tasks"]]
    run = subprocess.run([*cmd, "--tasks", "jt_choice", "--limit", "4", "--out", str(tmp_path / "h")], cwd=REPO,
                         env=env, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    results = json.load(open(tmp_path / "h" / "results.json"))
    assert 0.0 <= results["results"]["jt_choice"]["acc,none"] <= 1.0
    assert "jt_choice" in run.stdout
    bad = subprocess.run([*cmd, "--tasks", "no_such_task", "--out", str(tmp_path / "x")], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=600)  # fmt: skip
    assert bad.returncode == 2 and "unknown lm-evaluation-harness tasks ['no_such_task']" in bad.stderr
    assert bad.stderr.strip().count("\n") == 0 and not (tmp_path / "x").exists()
    helped = subprocess.run([sys.executable, "-m", "jaxtrans.eval.harness", "--help"], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=120)  # fmt: skip
    assert helped.returncode == 0 and "--include_path" in helped.stdout


def test_multiple_choice_in_the_eval_suite(harness_setup, shared_data, tmp_path):
    from jaxtrans.data.sources import Source
    from jaxtrans.eval.choice import ChoiceTask
    from jaxtrans.eval.suite import EvalSpec, evaluate

    s = harness_setup
    data = write_choice_file(shared_data, str(tmp_path / "choice.jsonl"))
    task = ChoiceTask("talpco_choice", Source(data), "{question}")
    base = ModelView(s["view"].cfg, llama.Adapters(), {"params": s["view"].variables["params"]}, s["view"].tokenizer)
    result = evaluate(s["view"], None, EvalSpec(multiple_choice=(task,)), str(tmp_path / "ev"), baseline=base)
    assert result["mc_talpco_choice"]["n"] == 12 and "mc_talpco_choice" in result["baseline"]
    # the same picks as lm-evaluation-harness on the same file (jt_choice uses the same template)
    import lm_eval
    from lm_eval.tasks import TaskManager

    from jaxtrans.eval.lm_eval_model import JaxtransLM

    theirs = lm_eval.simple_evaluate(model=JaxtransLM(view=s["view"]), tasks=["jt_choice"],
                                     task_manager=TaskManager(include_path=s["tasks"]))  # fmt: skip
    assert theirs["results"]["jt_choice"]["acc,none"] == result["mc_talpco_choice"]["acc"]
    assert theirs["results"]["jt_choice"]["acc_norm,none"] == result["mc_talpco_choice"]["acc_norm"]
    md = open(tmp_path / "ev" / "eval.md").read()
    assert "talpco_choice: accuracy" in md and "Multiple choice `talpco_choice`: 12 questions" in md
