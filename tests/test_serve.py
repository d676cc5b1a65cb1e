"""``python -m jaxtrans.serve`` as a real process on 127.0.0.1: the openai client, lm-evaluation-harness,
32 concurrent requests, a client gone mid-stream, and every bad request, against the in-process answers."""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import time

import pytest
import requests

from tests.serving import server, tcot_model

KEY = "s3cret"
NAME = "peft"  # the served name: the adapter directory's


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A TCOT server and a plain one (with an API key) for the same tiny model and adapter; the view in-process."""
    from jaxtrans.view import load_view

    tmp = tmp_path_factory.mktemp("serve")
    model, peft = tcot_model(tmp)
    view, tags = load_view(model, peft)
    with contextlib.ExitStack() as stack:
        tcot = stack.enter_context(server("--model", model, "--adapter", peft, log_path=str(tmp / "tcot.log")))
        plain = stack.enter_context(server("--model", model, "--adapter", peft, "--plain", "--api_key", KEY,
                                           log_path=str(tmp / "plain.log")))  # fmt: skip
        yield {"tcot": tcot, "plain": plain, "view": view, "tags": tags, "tmp": tmp}


def _reference(served, max_new: int):
    from jaxtrans.infer.tcot_chat import TcotChat

    return TcotChat.from_view(served["view"], max_new, tags=served["tags"])


def _extra(obj, name: str):
    return getattr(obj, name, None) or (obj.model_extra or {}).get(name)


def test_the_openai_client_gets_what_tcot_chat_answers_plain_and_streamed(served):
    import openai

    client = openai.OpenAI(base_url=served["tcot"] + "/v1", api_key="unused", max_retries=0, timeout=300)
    ref = _reference(served, 64)
    q1, q2 = "ประเทศไทยมีกี่จังหวัด", "ขอสูตรต้มยำกุ้งหน่อย"
    want = ref.send(q1)
    pivot = f"<EN> {want.en_query} <RESPONSE> {want.en_answer}"
    out = client.chat.completions.create(model=NAME, messages=[{"role": "user", "content": q1}], max_tokens=64,
                                         temperature=0)  # fmt: skip
    msg = out.choices[0].message
    assert msg.content == want.answer and _extra(msg, "reasoning_content") == pivot
    assert out.usage.completion_tokens > 0 and out.choices[0].finish_reason in ("stop", "length")
    stream = client.chat.completions.create(model=NAME, messages=[{"role": "user", "content": q1}], max_tokens=64,
                                            temperature=0, stream=True)  # fmt: skip
    chunks = [c for c in stream if c.choices]
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == want.answer
    assert "".join(_extra(c.choices[0].delta, "reasoning_content") or "" for c in chunks) == pivot
    assert len(chunks) > 3  # it came in pieces
    # turn two: the first turn goes back in English (from reasoning_content, or from the server's memory)
    from jaxtrans.data.template import render

    english = render(served["view"].tokenizer, ref.messages(q2))  # the first turn in English
    second = ref.send(q2)
    for first in ({"role": "assistant", "content": msg.content, "reasoning_content": pivot},
                  {"role": "assistant", "content": msg.content}):  # fmt: skip
        turns = [{"role": "user", "content": q1}, first, {"role": "user", "content": q2}]
        out = client.chat.completions.create(model=NAME, messages=turns, max_tokens=64, temperature=0)
        assert out.choices[0].message.content == second.answer
        assert out.usage.prompt_tokens == len(english)
    unknown = [{"role": "user", "content": q1}, {"role": "assistant", "content": "คำตอบอื่น"}, turns[-1]]
    out = client.chat.completions.create(model=NAME, messages=unknown, max_tokens=8, temperature=0)
    as_written = [{"role": "user", "content": q1}, {"role": "assistant", "content": "<RESPONSE> คำตอบอื่น"}, turns[-1]]
    assert out.usage.prompt_tokens == len(render(served["view"].tokenizer, as_written))  # one it never gave


PAIRS = [("Hello.", "สวัสดี"), ("Thank you.", "ขอบคุณ"), ("Good night.", "ราตรีสวัสดิ์"), ("Water", "น้ำ")]


def test_lm_eval_local_chat_completions_equals_jaxtrans_lm(served, monkeypatch):
    import lm_eval
    from lm_eval.tasks import TaskManager

    from jaxtrans.eval.lm_eval_model import JaxtransLM
    from tests.test_harness import TASKS

    tasks = served["tmp"] / "tasks"
    tasks.mkdir(exist_ok=True)
    data = served["tmp"] / "pairs.jsonl"
    data.write_text("".join(json.dumps({"en": e, "th": t}, ensure_ascii=False) + "\n" for e, t in PAIRS))
    (tasks / "jt_generate.yaml").write_text(TASKS["jt_generate"].format(data=data))  # now asked as a chat
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("OPENAI_API_KEY", KEY)  # what local-chat-completions sends as its bearer token

    def run(model, **kw):
        return lm_eval.simple_evaluate(
            model=model,
            tasks=["jt_generate"],
            apply_chat_template=True,
            log_samples=True,
            task_manager=TaskManager(include_path=str(tasks)),
            **kw,
        )

    args = f"model={NAME},base_url={served['plain']}/v1/chat/completions,num_concurrent=1,max_retries=1"
    theirs = run("local-chat-completions", model_args=args)
    ours = run(JaxtransLM(view=served["view"], batch_size=1))
    metric = "exact_match,none"
    assert theirs["results"]["jt_generate"][metric] == ours["results"]["jt_generate"][metric]
    gen = {name: {d["doc_id"]: d["resps"] for d in r["samples"]["jt_generate"]}
           for name, r in (("theirs", theirs), ("ours", ours))}  # fmt: skip
    assert gen["theirs"] == gen["ours"] and any(r[0][0] for r in gen["ours"].values())


def _chat(url: str, content: str, **kw):
    body = {"model": NAME, "messages": [{"role": "user", "content": content}], "temperature": 0, **kw}
    return requests.post(f"{url}/v1/chat/completions", json=body, timeout=600)


def test_32_concurrent_requests_are_batched_and_the_33rd_is_refused(served):
    url, n = served["tcot"], 32
    questions = [f"คำถามข้อที่ {i} เรื่องอาหารไทย" for i in range(n)]
    with concurrent.futures.ThreadPoolExecutor(n) as pool:
        futures = [pool.submit(_chat, url, q, max_tokens=128) for q in questions]
        deadline = time.monotonic() + 120
        while requests.get(f"{url}/health", timeout=10).json()["held"] < n:
            assert time.monotonic() < deadline and not any(f.done() for f in futures)
            time.sleep(0.05)
        refused = _chat(url, "อีกคำถามหนึ่ง", max_tokens=8)
        answers = [f.result(timeout=600) for f in futures]
    assert refused.status_code == 503 and refused.headers["Retry-After"] == "1"
    assert "--max_queue" in refused.json()["error"]["message"]
    health = requests.get(f"{url}/health", timeout=10).json()
    assert health["largest_batch"] > 1 and health["held"] == 0
    for q, r in zip(questions, answers, strict=True):  # each as if it had been alone
        assert (
            r.status_code == 200
            and r.json()["choices"][0]["message"]["content"] == _reference(served, 128).send(q).answer
        )


def test_a_client_gone_mid_stream_frees_its_rows(served):
    url = served["tcot"]
    before = requests.get(f"{url}/health", timeout=10).json()
    body = {"model": NAME, "messages": [{"role": "user", "content": "เล่าเรื่องยาว ๆ"}], "max_tokens": 400, "stream": True}
    r = requests.post(f"{url}/v1/chat/completions", json=body, stream=True, timeout=600)
    lines = r.iter_lines()
    assert next(lines).startswith(b"data: ")
    r.close()  # gone mid-answer
    deadline = time.monotonic() + 60
    while (h := requests.get(f"{url}/health", timeout=10).json())["held"] or h["cancelled"] <= before["cancelled"]:
        assert time.monotonic() < deadline, h
        time.sleep(0.1)
    assert _chat(url, "ยังอยู่ไหม", max_tokens=8).status_code == 200  # still serving


BAD = [  # (what, body or raw text, status, words in the message)
    ("malformed JSON", "{not json", 400, "not valid JSON"),
    ("a wrong type", {"messages": [{"role": "user", "content": "x"}], "max_tokens": "many"}, 400, "max_tokens"),
    ("no messages", {"messages": []}, 400, "messages: List should have at least 1 item"),
    ("max_tokens 0", {"messages": [{"role": "user", "content": "x"}], "max_tokens": 0}, 400, "greater than 0"),
    ("n too large", {"messages": [{"role": "user", "content": "x"}], "n": 99}, 400, "--max_n 8"),
    ("too long", {"messages": [{"role": "user", "content": "สวัสดีครับ " * 300}]}, 400, "context is 512 tokens"),
    (
        "not alternating",
        {"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]},
        400,
        "must alternate user and assistant",
    ),
    ("an unknown role", {"messages": [{"role": "robot", "content": "x"}]}, 400, "messages.0.role"),
    ("logprobs", {"messages": [{"role": "user", "content": "x"}], "logprobs": True}, 400, "logprobs is not supported"),
    ("another model", {"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}]}, 404, "is not served here"),
]


@pytest.mark.parametrize("what,body,status,words", BAD, ids=[b[0] for b in BAD])
def test_bad_requests_get_openai_errors(served, what, body, status, words):
    url = served["tcot"] + "/v1/chat/completions"
    if isinstance(body, str):
        r = requests.post(url, data=body, headers={"Content-Type": "application/json"}, timeout=60)
    else:
        r = requests.post(url, json={"model": NAME, **body}, timeout=60)
    err = r.json()["error"]
    assert r.status_code == status and words in err["message"], err
    assert "\n" not in err["message"] and err["type"] == "invalid_request_error"


def test_an_api_key_guards_the_v1_routes(served):
    url = served["plain"]
    assert requests.get(f"{url}/health", timeout=10).status_code == 200  # no key needed
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}):
        r = requests.get(f"{url}/v1/models", headers=headers, timeout=10)
        assert r.status_code == 401 and "Authorization: Bearer" in r.json()["error"]["message"]
    r = requests.get(f"{url}/v1/models", headers={"Authorization": f"Bearer {KEY}"}, timeout=10)
    assert r.status_code == 200 and r.json()["data"][0]["id"] == NAME
    body = {"model": NAME, "prompt": "Hello", "max_tokens": 4}
    r = requests.post(f"{url}/v1/completions", json=body, headers={"Authorization": f"Bearer {KEY}"}, timeout=60)
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 4


def test_the_command_refuses_bad_flags_before_loading(tmp_path):
    import subprocess
    import sys

    from tests.conftest import REPO

    cases = ((["--max_batch", "0"], "--max_batch"), (["--adapter", str(tmp_path / "none")], "does not exist"),
             (["--api_key", " "], "--api_key is empty"))  # fmt: skip
    for args, words in cases:
        run = subprocess.run([sys.executable, "-m", "jaxtrans.serve", "--port", "0", *args], cwd=REPO,
                             capture_output=True, text=True, timeout=120)  # fmt: skip
        assert run.returncode == 2 and words in run.stderr and run.stderr.strip().count("\n") == 0, run.stderr


def test_the_chat_page_in_headless_chromium(served, tmp_path):
    """Type a Thai question, watch the answer stream in, show the English pivot (docs/serving.md's screenshot is
    taken the same way, against a real run: ``python -m tests.serving``)."""
    import shutil

    pytest.importorskip("playwright.sync_api")
    if not (shutil.which("chromium") or shutil.which("chromium-browser")):
        pytest.skip("headless Chromium is not installed (Debian: apt-get install chromium)")
    from tests.serving import drive_page

    url, question = served["tcot"], "ประเทศไทยมีกี่จังหวัด"
    want = _chat(url, question).json()["choices"][0]["message"]  # the same request as the page's, whole
    seen = drive_page(url, question, str(tmp_path / "page.png"))
    assert seen["model"] == NAME and seen["mode"] == "TCOT" and not seen["pivot_shown_before"]
    assert seen["answer"] == want["content"].strip() and seen["pivot"] == want["reasoning_content"].strip()
    assert seen["streamed_pieces"] > 1 and (tmp_path / "page.png").stat().st_size > 10_000
