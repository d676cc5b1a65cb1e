"""Synthetic byte-level BPE tokenizers with the layouts of today's chat models, built with ``tokenizers``.

* ``llama3``: GPT-4's regex pre-tokenizer + ByteLevel, BPE ids first, then the added/special tokens
  (``<|begin_of_text|>``, ``<|eot_id|>``, header ids and reserved specials) *after* the BPE vocabulary,
  a BOS post-processor and a Llama-3-style chat template.
* ``gpt4``: the same pre-tokenizer with the specials in the middle of nowhere: none but ``<|endoftext|>``
  after the vocabulary, ChatML template (Qwen2's layout).
* ``smollm2``: specials first (ids 0..k), GPT-2's ByteLevel(use_regex=True) pre-tokenizer, ChatML.

The BPE is trained on English prompts plus a little Thai, so the base already owns some Thai merges,
as real multilingual vocabularies do.
"""

from __future__ import annotations

import json
import os

GPT4_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
LLAMA3_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
    "{{ m['content'] | trim }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)
CHATML_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
LAYOUTS = ("llama3", "gpt4", "smollm2")


def english_and_thai(shared: str) -> list[str]:
    texts = []
    for line in open(os.path.join(shared, "eval-mt-bench", "question.jsonl")):
        texts += json.loads(line)["turns"]
    alpaca = json.load(open(os.path.join(shared, "en-instruct-alpaca", "alpaca_data_1k.json")))
    texts += [r["instruction"] + " " + r["input"] + " " + r["output"] for r in alpaca]
    thai = [x.strip() for x in open(os.path.join(shared, "th-wisesight", "pos.txt")) if x.strip()]
    return texts + thai[:60]


def build(layout: str, shared: str, out_dir: str, vocab_size: int = 1500) -> str:
    """Train and save a tokenizer directory (tokenizer.json + tokenizer_config.json, no model files)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(ignore_merges=layout == "llama3"))
    if layout == "smollm2":
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    else:
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(GPT4_PATTERN), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
    tok.decoder = decoders.ByteLevel()
    first = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"] if layout == "smollm2" else []
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=first,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(english_and_thai(shared), trainer)
    if layout == "llama3":
        specials = ["<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>",
                    "<|reserved_special_token_1|>", "<|start_header_id|>", "<|end_header_id|>",
                    "<|reserved_special_token_2|>", "<|eot_id|>"]  # fmt: skip
        specials += [f"<|reserved_special_token_{i}|>" for i in range(3, 40)]
        tok.add_special_tokens(specials)
        bos = tok.token_to_id("<|begin_of_text|>")
        tok.post_processor = processors.TemplateProcessing(
            single="<|begin_of_text|> $A", pair="<|begin_of_text|> $A <|begin_of_text|> $B",
            special_tokens=[("<|begin_of_text|>", bos)],
        )  # fmt: skip
        kwargs = dict(bos_token="<|begin_of_text|>", eos_token="<|eot_id|>", chat_template=LLAMA3_TEMPLATE)
    elif layout == "gpt4":
        tok.add_special_tokens(["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
        kwargs = dict(eos_token="<|im_end|>", pad_token="<|endoftext|>", chat_template=CHATML_TEMPLATE)
    else:
        kwargs = dict(
            bos_token="<|im_start|>", eos_token="<|im_end|>", unk_token="<|endoftext|>", chat_template=CHATML_TEMPLATE
        )
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, **kwargs)
    path = os.path.join(out_dir, f"tok-{layout}")
    hf.save_pretrained(path)
    return path
