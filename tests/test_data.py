"""Data sources and stage data: formats, schema mapping, bad data named by file and line, resumable generation."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from jaxtrans.config import component, source
from jaxtrans.data.generated import cached_generate
from jaxtrans.data.mixture import Component, Fillers, Language, build_rows, read_component
from jaxtrans.data.sources import ReadStats, Source, read
from jaxtrans.errors import JaxtransError


def _write(path, text: str | bytes) -> str:
    mode = "wb" if isinstance(text, bytes) else "w"
    with open(path, mode) as f:
        f.write(text)
    return str(path)


@pytest.fixture(scope="module")
def tokenizer():
    from jaxtrans.pretrained import load_tokenizer, resolve

    return load_tokenizer(resolve("embedded:smollm2"))


def _read(path, required=("src", "tgt"), **kw):
    return list(read(Source(path=path, **kw), required))


def test_formats_and_column_mapping(tmp_path):
    rows = [{"en": "Hello", "th": "สวัสดี", "turns": ["a", "b"]}, {"en": "Yes", "th": "ใช่", "turns": ["c"]}]
    jsonl = _write(tmp_path / "p.jsonl", "\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n")
    js = _write(tmp_path / "p.json", json.dumps(rows, ensure_ascii=False))
    csv = _write(tmp_path / "p.csv", "en,th\nHello,สวัสดี\nYes,ใช่\n")
    cols = (("src", "en"), ("tgt", "th"))
    for path in (jsonl, js, csv):
        got = _read(path, columns=cols)
        assert [(r["src"], r["tgt"]) for r in got] == [("Hello", "สวัสดี"), ("Yes", "ใช่")]
    assert _read(jsonl, columns=(("src", "turns.1"), ("tgt", "th")), skip_bad=True)[0]["src"] == "b"
    assert _read(jsonl, columns=cols, limit=1)[0]["_where"] == f"{jsonl}:1"
    assert [r["src"] for r in _read(jsonl, columns=cols, skip=1)] == ["Yes"]
    # per-host reading: two processes split the records between them, nothing lost or repeated
    halves = [[r["src"] for r in read(Source(jsonl, columns=cols), ("src", "tgt"), process=(i, 2))] for i in (0, 1)]
    assert halves == [["Hello"], ["Yes"]]
    en = _write(tmp_path / "a.en", "one\ntwo\n")
    th = _write(tmp_path / "a.th", "หนึ่ง\nสอง\n")
    assert [(r["src"], r["tgt"]) for r in _read(en, aligned=th)] == [("one", "หนึ่ง"), ("two", "สอง")]


def test_parquet_through_datasets(tmp_path):
    import datasets

    path = str(tmp_path / "t.parquet")
    datasets.Dataset.from_dict({"text": ["ก ข", "ค ง"]}).to_parquet(path)
    assert [r["text"] for r in read(Source(path), ("text",))] == ["ก ข", "ค ง"]


@pytest.mark.parametrize(
    "content, message",
    [
        ('{"en": "a", "th": "b"}\n{"en": "a", "th": \n', "p.jsonl:2: malformed JSON"),
        ('{"en": "a", "th": "b"}\n{"en": "a"}\n', "p.jsonl:2: no 'th' column for 'tgt' (columns: en)"),
        ('{"en": "a", "th": "b"}\n["en", "th"]\n', "p.jsonl:2: a record must be an object"),
        (b'{"en": "a", "th": "b"}\n{"en": "\xff\xfe", "th": "b"}\n', "p.jsonl:2: not UTF-8"),
        ("", "p.jsonl is empty"),
    ],
)
def test_bad_data_names_file_and_line(tmp_path, content, message):
    path = _write(tmp_path / "p.jsonl", content)
    with pytest.raises(JaxtransError, match="p.jsonl") as e:
        _read(path, columns=(("src", "en"), ("tgt", "th")))
    assert message in str(e.value)


def test_bad_records_skipped_when_allowed_are_counted(tmp_path):
    path = _write(tmp_path / "p.jsonl", '{"en": "a", "th": "b"}\n{"en": 1\n{"en": "c"}\n{"en": "d", "th": "e"}\n')
    stats = ReadStats()
    got = list(read(Source(path, columns=(("src", "en"), ("tgt", "th")), skip_bad=True), ("src", "tgt"), (), stats))
    assert [r["src"] for r in got] == ["a", "d"]
    assert (stats.records, stats.skipped) == (2, 2)
    assert stats.first_problems[0].startswith(f"{path}:2: malformed JSON")


def test_missing_file_and_empty_component(tmp_path):
    with pytest.raises(JaxtransError, match="does-not-exist.jsonl does not exist"):
        _read(str(tmp_path / "does-not-exist.jsonl"))
    blank = _write(tmp_path / "blank.jsonl", "\n\n")
    comp = Component.from_config("s.blank", component("translate", source(blank)))
    with pytest.raises(JaxtransError, match="'s.blank': source .*blank.jsonl yielded no records"):
        read_component(comp)


def test_too_long_examples_by_policy(tmp_path, tokenizer):
    long_text = " ".join(["word"] * 300)
    path = _write(tmp_path / "t.jsonl", json.dumps({"text": "short"}) + "\n" + json.dumps({"text": long_text}) + "\n")
    comp = Component.from_config("s.t", component("pretrain", source(path)))
    lang, fill = Language(), Fillers()
    with pytest.raises(JaxtransError, match=r"t.jsonl:2 has \d+ tokens, more than the 64-token rows"):
        build_rows([comp], tokenizer, lang, fill, 64, 4, too_long="error")
    rows, reports = build_rows([comp], tokenizer, lang, fill, 64, 4, too_long="skip")
    assert reports[0].pack.skipped == 1
    rows, reports = build_rows([comp], tokenizer, lang, fill, 64, 4, too_long="truncate")
    assert reports[0].pack.truncated == 1 and rows["tokens"].shape[1] == 64


def test_mixture_weights_and_missing_translator(tmp_path, tokenizer):
    a = _write(tmp_path / "a.jsonl", "".join(json.dumps({"text": f"a{i}"}) + "\n" for i in range(50)))
    b = _write(tmp_path / "b.jsonl", "".join(json.dumps({"text": f"b{i}"}) + "\n" for i in range(50)))
    comps = [
        Component.from_config("s.a", component("pretrain", source(a), weight=3.0)),
        Component.from_config("s.b", component("pretrain", source(b), weight=1.0)),
    ]
    rows, reports = build_rows(comps, tokenizer, Language(), Fillers(), 16, 40, seed=1)
    assert [r.rows_used for r in reports] == [30, 10]
    assert len(rows["tokens"]) == 40
    again, _ = build_rows(comps, tokenizer, Language(), Fillers(), 16, 40, seed=1)
    assert all(np.array_equal(rows[k], again[k]) for k in rows)  # deterministic for a seed
    tcot = _write(tmp_path / "q.jsonl", json.dumps({"en_query": "Hi", "en_answer": "Hello"}) + "\n")
    comp = Component.from_config("s.tcot", component("tcot", source(tcot)))
    with pytest.raises(JaxtransError, match="'s.tcot' lacks fields that need a translator"):
        build_rows([comp], tokenizer, Language(), Fillers(), 64, 4)


def test_answer_tokens_caps_a_components_generated_answers(tmp_path):
    """A TCOT component with ``answer_tokens`` asks the frozen model for answers of at most that many tokens (a
    brief English part before the target tag); unset, the run's ``generation.max_new_tokens`` applies."""
    from jaxtrans.data.mixture import fill

    path = _write(tmp_path / "q.jsonl", json.dumps({"en_query": "Hi"}) + "\n")
    asked = []

    def answer(texts, max_new_tokens=None):
        asked.append(max_new_tokens)
        return [f"answer to {t}" for t in texts]

    fillers = Fillers(answer=answer, to_target=lambda texts: [f"th {t}" for t in texts])
    for options, cap in (({"answer_tokens": 48}, 48), ({}, None)):
        comp = Component.from_config("s.tcot", component("tcot", source(path), **options))
        got = fill(comp, [{"en_query": "Hi"}], fillers)[0]
        assert got["en_answer"] == "answer to Hi" and got["answer"] == "th answer to Hi" and asked.pop() == cap
    with pytest.raises(JaxtransError, match="'s.t': answer_tokens=48 must be a positive token count, on a kind"):
        Component.from_config("s.t", component("pretrain", source(path), answer_tokens=48))


def test_generation_cache_resumes_without_duplicates_or_losses(tmp_path):
    path = str(tmp_path / "gen.jsonl")
    inputs = [f"prompt {i}" for i in range(10)] + ["prompt 3"]  # a duplicate is generated once
    calls: list[list[str]] = []

    def upper(batch: list[str]) -> list[str]:
        calls.append(batch)
        if len(calls) == 3:
            raise KeyboardInterrupt  # killed while generating the third batch
        return [t.upper() for t in batch]

    with pytest.raises(KeyboardInterrupt):
        cached_generate(path, inputs, upper, "m1", batch_size=3)
    with open(path, "a") as f:
        f.write('{"key": "torn')  # a line cut short by the kill
    calls.clear()
    out = cached_generate(path, inputs, lambda b: calls.append(b) or [t.upper() for t in b], "m1", batch_size=3)
    assert out == [t.upper() for t in inputs]
    assert [t for b in calls for t in b] == [f"prompt {i}" for i in range(6, 10)]  # only the missing ones
    rows = [json.loads(line) for line in open(path)]
    assert sorted(r["input"] for r in rows) == sorted(set(inputs))
    # different settings (another model) never reuse these outputs
    assert cached_generate(path, ["prompt 0"], lambda b: ["other"], "m2") == ["other"]
    assert os.path.getsize(path) > 0


def test_streaming_rows_are_deterministic_and_resume_exactly(tmp_path, tokenizer):
    from jaxtrans.data.mixture import stream_rows
    from jaxtrans.train.data import StreamingBatches

    a = _write(tmp_path / "a.txt", "".join(f"line {i} of a\n" for i in range(30)))
    b = _write(tmp_path / "b.txt", "".join(f"ข้อความ {i}\n" for i in range(30)))
    comps = [
        Component.from_config("s.a", component("pretrain", source(a, streaming=True))),
        Component.from_config(
            "s.b",
            component("pretrain", source(b, streaming=True)),
        ),
    ]

    def make():
        return stream_rows(comps, tokenizer, Language(), Fillers(), 32, seed=5, chunk=16)

    full = StreamingBatches(make, local_batch=2, accum=2)
    batches = [next(full) for _ in range(6)]  # more rows than one pass: the streams restart
    resumed = StreamingBatches(make, local_batch=2, accum=2)
    resumed.restore({"position": 3})
    for want in batches[3:]:
        got = next(resumed)
        assert all(np.array_equal(got[k], want[k]) for k in want)
    assert batches[0]["tokens"].shape == (2, 2, 32)


def test_eval_stage_config_and_data_errors_come_before_any_model_work(tmp_path):
    from jaxtrans import pipeline
    from jaxtrans.config import eval_stage, run_defaults, train_stage

    good = tmp_path / "pairs.jsonl"
    good.write_text('{"en": "cat", "th": "แมว"}\n')
    cfg = run_defaults()
    cfg.curriculum = ("sft", "final")
    cfg.stages = {
        "sft": train_stage({"pairs": component("translate", source(str(good), columns={"src": "en", "tgt": "th"}))}),
        "final": eval_stage(pairs=source(str(good), columns={"english": "en", "target": "th"})),
    }
    pipeline.check(cfg)
    pipeline.preflight(cfg)
    cfg.stages.final.pairs.columns = {"english": "en", "target": "thai"}  # a column the file lacks
    with pytest.raises(JaxtransError, match=r"pairs.jsonl:1: no 'thai' column for 'target'"):
        pipeline.preflight(cfg)
    cfg.stages.final.pairs.path = str(tmp_path / "missing.jsonl")
    with pytest.raises(JaxtransError, match="missing.jsonl does not exist"):
        pipeline.preflight(cfg)
    cfg.stages.final.bleu = True
    with pytest.raises(JaxtransError, match=r"eval stage keys \['bleu'\] are unknown"):
        pipeline.check(cfg)


def test_script_share_of_real_corpora(shared_data):
    """Real text in its own script passes; Simplified Chinese declared Traditional, or English declared Thai,
    is refused in one line naming the source and the fix."""
    import itertools

    from jaxtrans.data import script

    def texts(path: str, column: str) -> list[str]:
        src = Source(os.path.join(shared_data, path), columns=(("text", column),))
        return [r["text"] for r in itertools.islice(read(src, ("text",)), 300)]

    assert script.check(texts("th-thaigov/thaigov_sample.jsonl", "text"), "th", "thaigov").share > 0.95
    assert script.check(texts("eval-vicuna-ne/vicuna_en_ne.jsonl", "ne"), "ne", "vicuna ne").share > 0.95
    zh = texts("xquad-en-th-zh/xquad.zh.json", "paragraphs.0.context")
    got = script.check(zh, "zh_hans", "xquad zh")
    assert got.share > 0.9 and got.variety == "Simplified" and got.variety_share > 0.95 and got.telling > 1000
    with pytest.raises(
        JaxtransError, match=r"^xquad zh: only 0% of its \d+ characters that differ .* declare zh_hans$"
    ):
        script.check(zh, "zh_hant", "xquad zh")
    with pytest.raises(JaxtransError, match=r"^talpco: only 0% of its \d+ letters are Thai, .*fix language.code$"):
        script.check(texts("en-th-talpco/talpco_en_th.jsonl", "en"), "th", "talpco")
    assert script.check(["any text"], "fr", "french") is None  # a language whose script is not known: not checked


def test_explode_makes_each_list_item_a_record(tmp_path):
    """SQuAD-format articles -> one record per paragraph, each named by its article and index; an article
    without the list is refused with its place."""
    path = tmp_path / "squad.json"
    path.write_text(json.dumps({"data": [{"paragraphs": [{"context": "a"}, {"context": "b"}]},
                                         {"paragraphs": [{"context": "c"}]}]}))  # fmt: skip
    src = Source(str(path), explode="paragraphs", columns=(("text", "context"),))
    got = list(read(src, ("text",)))
    assert [r["text"] for r in got] == ["a", "b", "c"]
    assert got[1]["_where"] == f"{path}: record 0, paragraphs[1]"
    path.write_text(json.dumps({"data": [{"paragraphs": [{"context": "a"}]}, {"title": "no paragraphs"}]}))
    with pytest.raises(JaxtransError, match=r"record 1: no list column 'paragraphs' to explode"):
        list(read(src, ("text",)))


@pytest.mark.parametrize(
    "line, message",
    [
        ('{"text": 5}', "/d.jsonl:1: column 'text' (text) holds int '5', not text"),
        ('{"text": {"a": 1}}', "/d.jsonl:1: column 'text' (text) holds dict \"{'a': 1}\", not text"),
        ('{"text": "ok \\ud800 x"}', "column 'text' (text) holds a lone surrogate '\\ud800' at character 3"),
    ],
)
def test_a_value_of_the_wrong_type_is_one_line_naming_file_and_line(tmp_path, line, message):
    from jaxtrans.data.sources import Source, read

    path = tmp_path / "d.jsonl"
    path.write_text(line + "\n")
    with pytest.raises(JaxtransError) as e:
        list(read(Source(path=str(path)), ("text",)))
    assert message in str(e.value)


def test_parser_limits_and_wrong_formats_are_one_line(tmp_path):
    from jaxtrans.data.sources import Source, read

    long_field = tmp_path / "long.csv"
    long_field.write_text('text\n"' + "ก" * 200_000 + '"\n')  # a long document in one field is data
    assert [len(r["text"]) for r in read(Source(path=str(long_field)), ("text",))] == [200_000]
    deep = tmp_path / "deep.jsonl"
    deep.write_text('{"text": ' + "[" * 100_000 + "]" * 100_000 + "}\n")
    with pytest.raises(JaxtransError, match=r"deep.jsonl:1: JSON nested too deeply for the parser"):
        list(read(Source(path=str(deep)), ("text",)))
    with pytest.raises(JaxtransError, match=r"long.csv is not a readable parquet file \(Parquet magic bytes"):
        list(read(Source(path=str(long_field), format="parquet"), ("text",)))
