"""A jaxtrans model for EleutherAI's lm-evaluation-harness (``pip install -e '.[harness]'``).

    import lm_eval
    from jaxtrans.eval.lm_eval_model import JaxtransLM

    lm = JaxtransLM(model="embedded:smollm2", adapter="runs/thai/export/peft")
    lm_eval.simple_evaluate(model=lm, tasks=["xnli_th", "xcopa_th", "belebele_tha_Thai"])

or ``lm_eval --model jaxtrans --model_args model=embedded:smollm2,adapter=runs/thai/export/peft``, or
``python -m jaxtrans.eval.harness``. LoRA adapters and new-token rows run in place (nothing is merged).

Requests are tokenized by the harness's own ``TemplateLM`` rules, the ones its
HF backend uses (context/continuation split, empty contexts scored after
BOS/EOS, a BOS prefix never doubled), with ``add_bos_token`` as in the HF
backend; scoring is ``jaxtrans.eval.loglik``; ``generate_until`` decodes
greedily (or samples when the task asks) with jaxtrans' KV-cache generator,
stops on the ids an exported model's ``generation_config`` names, and cuts the
text at the first stop string, as the HF backend does.
"""

from __future__ import annotations

from typing import Any

import lm_eval.models  # noqa: F401  (the built-in backends first: the registry only fills itself while empty)
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from tqdm import tqdm

from jaxtrans import stop as sigterm
from jaxtrans.errors import JaxtransError
from jaxtrans.eval import loglik
from jaxtrans.view import ModelView, load_view


@register_model("jaxtrans")
class JaxtransLM(TemplateLM):
    """lm-evaluation-harness LM over a jaxtrans model (+ adapter)."""

    def __init__(
        self,
        model: str = "embedded:smollm2",
        adapter: str | None = None,
        view: ModelView | None = None,
        batch_size: int | str = 8,
        max_length: int | None = None,
        max_gen_toks: int = 256,
        add_bos_token: bool | None = None,
        dtype: str = "float32",
        allow_other_base: bool = False,
        **_: Any,
    ) -> None:
        super().__init__()
        self.view = view if view is not None else load_view(model, adapter, dtype, allow_other_base)[0]
        self.tokenizer = self.view.tokenizer
        self.batch_size = int(batch_size) if str(batch_size) != "auto" else 8
        self._max_length = int(max_length) if max_length else None
        self._max_gen_toks = int(max_gen_toks)
        self.add_bos_token = add_bos_token

    # ---------------------------------------------------------------- what the harness asks of a model

    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eos_token_id

    @property
    def prefix_token_id(self) -> int:
        bos = self.tokenizer.bos_token_id
        return bos if bos is not None else self.tokenizer.eos_token_id

    @property
    def max_length(self) -> int:
        return self._max_length or self.view.cfg.max_position_embeddings

    @property
    def max_gen_toks(self) -> int:
        return self._max_gen_toks

    def _special(self, add_special_tokens: bool | None) -> dict[str, bool]:
        if add_special_tokens is not None:
            return {"add_special_tokens": add_special_tokens}
        return {} if self.add_bos_token is None else {"add_special_tokens": self.add_bos_token}

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs: Any) -> list[int]:
        special = self._special(add_special_tokens)
        bos = self.tokenizer.decode(self.prefix_token_id)
        if add_special_tokens is None and bos and string.startswith(bos):
            special = {"add_special_tokens": False}  # the string already starts with BOS: never two
        ids = self.tokenizer.encode(string, **special)
        left = kwargs.get("left_truncate_len")
        return ids[-left:] if left else ids

    @property
    def tokenizer_name(self) -> str:
        return str(getattr(self.tokenizer, "name_or_path", "") or "jaxtrans").replace("/", "__")

    def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        """The tokenizer's chat template, as the HF backend applies it (thinking off, as jaxtrans renders)."""
        return self.tokenizer.apply_chat_template(chat_history, tokenize=False, enable_thinking=False,
                                                  add_generation_prompt=add_generation_prompt,
                                                  continue_final_message=not add_generation_prompt)  # fmt: skip

    def tok_decode(self, tokens: list[int], skip_special_tokens: bool = True) -> str:
        return self.tokenizer.decode(tokens, skip_special_tokens=skip_special_tokens)

    def _loglikelihood_tokens(self, requests: list, disable_tqdm: bool = False, **_: Any) -> list[tuple[float, bool]]:
        pairs = [(ctx, cont) for _, ctx, cont in requests]
        out: list[tuple[float, bool]] = []
        step = max(self.batch_size * 8, 1)  # progress in chunks; loglik batches and sorts within each
        for i in tqdm(range(0, len(pairs), step), disable=disable_tqdm, desc="loglikelihood"):
            sigterm.check()  # between batches
            out += loglik.loglikelihood(self.view, pairs[i : i + step], self.max_length, self.batch_size)
        return out

    def loglikelihood_rolling(self, requests: list, disable_tqdm: bool = False) -> list[float]:
        token_lists = [self.tok_encode(req.args[0]) for req in requests]
        return loglik.rolling_loglikelihood(
            self.view, token_lists, self.prefix_token_id, self.max_length, self.batch_size
        )

    def generate_until(self, requests: list, disable_tqdm: bool = False) -> list[str]:
        """Requests with the same generation settings run together, ``batch_size`` prompts at a time."""
        import json

        groups: dict[str, list[int]] = {}
        for i, req in enumerate(requests):
            groups.setdefault(json.dumps(req.args[1] or {}, sort_keys=True, default=str), []).append(i)
        out: list[str] = [""] * len(requests)
        bar = tqdm(total=len(requests), disable=disable_tqdm, desc="generate_until")
        for indices in groups.values():
            for start in range(0, len(indices), self.batch_size):
                sigterm.check()  # between batches
                chunk = indices[start : start + self.batch_size]
                texts = self._generate([requests[i].args[0] for i in chunk], dict(requests[chunk[0]].args[1] or {}))
                for i, text in zip(chunk, texts, strict=True):
                    out[i] = text
                bar.update(len(chunk))
        bar.close()
        return out

    def _generate(self, contexts: list[str], kwargs: dict[str, Any]) -> list[str]:
        from jaxtrans.data.template import stop_token_ids
        from jaxtrans.infer.generate import SamplingConfig, generate

        until = kwargs.pop("until", None) or []
        until = [until] if isinstance(until, str) else list(until)
        eos = self.tok_decode([self.eot_token_id], skip_special_tokens=False)
        if eos and eos not in until:
            until.append(eos)
        max_new = int(kwargs.pop("max_gen_toks", self.max_gen_toks))
        if self.max_length - max_new <= 0:
            raise JaxtransError(f"max_gen_toks={max_new} leaves no room for a prompt in {self.max_length} tokens")
        sampling = SamplingConfig(
            max_new_tokens=max_new,
            temperature=float(kwargs.get("temperature", 0.0)) if kwargs.get("do_sample", False) else 0.0,
            top_p=float(kwargs.get("top_p", 1.0) or 1.0),
            top_k=int(kwargs.get("top_k", 0) or 0),
        )
        prompts = [self.tok_encode(c, left_truncate_len=self.max_length - max_new) for c in contexts]
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.eot_token_id
        stops = stop_token_ids(self.tokenizer)  # what an exported model's generation_config stops on
        new = generate(self.view.cfg, self.view.variables, prompts, sampling, stops, pad,
                       max_len=max(map(len, prompts)) + max_new, adapters=self.view.adapters)  # fmt: skip
        texts = []
        for ids in new:
            text = self.tok_decode(ids)
            for stop in until:
                if stop:
                    text = text.split(stop)[0]
            texts.append(text)
        return texts
