"""A tiny TCOT model (SmolLM2's tokenizer plus the three tags, a PEFT adapter with their rows) and a real
server process on 127.0.0.1 for it, bounded in time (for tests/test_serve*.py)."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import numpy as np

from tests.conftest import REPO, tiny_hf_model

STARTUP_S = 300  # model load and the first compile included


def tcot_model(tmp) -> tuple[str, str]:
    """(model dir, adapter dir): random weights, LoRA as if trained, the TCOT tags as new special tokens."""
    import jax

    import jaxtrans
    from jaxtrans.data.formats import Tags
    from jaxtrans.export import export_peft
    from jaxtrans.model import llama
    from jaxtrans.model.lora import LoraConfig
    from jaxtrans.vocab.base import load_tokenizer

    tok = load_tokenizer("embedded:smollm2")
    _, path = tiny_hf_model(tmp, vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                            max_position_embeddings=512, tie_word_embeddings=True)  # fmt: skip
    tok.save_pretrained(path)
    tags = Tags()
    tok.add_tokens([tags.english, tags.response, tags.target], special_tokens=True)
    model, _ = jaxtrans.load_pretrained(path, with_tokenizer=False)
    adapters = llama.Adapters(lora=LoraConfig.make(4, 8, targets="q,v,down"), new_tokens=3)
    trainable = jax.device_get(llama.init_trainable(model.config, adapters, 0))
    rng = np.random.default_rng(0)
    trainable = jax.tree_util.tree_map_with_path(
        lambda p, x: rng.normal(0, 0.05, x.shape).astype(x.dtype) if p[-1].key == "b" else np.asarray(x), trainable
    )
    peft = export_peft(str(tmp / "peft"), model.config, trainable, adapters, path, tokenizer=tok, tags=tags)
    return path, peft


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def server(*args: str, log_path: str) -> Iterator[str]:
    """A ``python -m jaxtrans.serve`` process; yields its base URL once /health answers; killed on exit."""
    import requests

    port = free_port()
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "jaxtrans.serve", *args, "--port", str(port)], cwd=REPO,
                                env=env, stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + STARTUP_S
            while True:
                assert proc.poll() is None, open(log_path).read()[-3000:]
                assert time.monotonic() < deadline, "the server did not start in time"
                try:
                    if requests.get(f"{url}/health", timeout=2).status_code == 200:
                        break
                except requests.ConnectionError:
                    time.sleep(0.5)
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=30)


def drive_page(url: str, question: str, screenshot: str) -> dict:
    """The chat page in headless Chromium: type ``question``, wait for the streamed answer, switch the pivot on."""
    import shutil

    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 900, "height": 640})
            page.goto(url + "/", timeout=60_000)
            page.wait_for_selector("body[data-ready='1']", timeout=60_000)
            page.evaluate("""() => { window.pieces = 0; new MutationObserver(() => window.pieces++)
                .observe(document.getElementById('log'), {subtree: true, characterData: true, childList: true}); }""")
            page.fill("#q", question)
            page.press("#q", "Enter")
            page.wait_for_selector(".assistant[data-done='1']", timeout=600_000)
            pivot = page.locator(".assistant .pivot").last
            seen = {"model": page.inner_text("#model"), "mode": page.inner_text("#mode"),
                    "pivot_shown_before": pivot.is_visible(), "streamed_pieces": page.evaluate("window.pieces"),
                    "answer": page.locator(".assistant .answer").last.inner_text().strip()}  # fmt: skip
            page.check("#show-pivot")
            seen["pivot"] = pivot.inner_text().strip() if pivot.is_visible() else None
            page.screenshot(path=screenshot, full_page=True)
            return seen
        finally:
            browser.close()


if __name__ == "__main__":  # the docs' screenshot: python -m tests.serving URL QUESTION OUT.png
    print(drive_page(sys.argv[1], sys.argv[2], sys.argv[3]))
