"""Read records for a stage from local files, the HuggingFace hub, or the offline embedded set.

A *source* is a small config block::

    path:     a file, a directory or glob of files, ``hf:org/name[:config]`` (hub, via ``datasets``),
              or ``embedded:NAME`` (offline data shipped in pip packages, see ``jaxtrans.data.embedded``)
    format:   auto | jsonl | json | csv | parquet | text  (auto = from the file extension)
    aligned:  a second text file, line-aligned with ``path`` (parallel corpora such as FLORES): records
              are ``{"src": line of path, "tgt": line of aligned}``
    columns:  role -> column, e.g. ``{"src": "en", "tgt": "th"}``; a column may index a list (``turns.0``)
    explode:  a column holding a list: each of its items is a record (``paragraphs`` of a SQuAD-format article),
              named ``file: record i, paragraphs[j]``
    split, streaming, limit (0 = all), skip (leave out the first records),
    skip_bad (count and report bad records instead of failing)

Every record comes out as ``{role: value, ..., "_where": "file:line"}``, so any
later problem (a missing column, an overlong example) names its file and line.

Local json/jsonl/csv/text files are read by a line-exact reader: ``datasets``'
JSON and CSV builders report a malformed line as an Arrow error without the
line, and would cache a copy of every file first. Parquet, Arrow and hub
datasets are read with ``datasets`` (streamed when ``streaming`` is set).
With several processes each one keeps every ``process_count``-th record (hub
streams: ``datasets.distributed.split_dataset_by_node``).
"""

from __future__ import annotations

import csv
import dataclasses
import glob
import io
import json
import os
from collections.abc import Iterator, Sequence
from typing import Any

from jaxtrans import stop
from jaxtrans.errors import JaxtransError

FORMATS = ("auto", "jsonl", "json", "csv", "parquet", "text")
_EXT = {".jsonl": "jsonl", ".json": "json", ".csv": "csv", ".parquet": "parquet", ".txt": "text", ".tsv": "csv"}


@dataclasses.dataclass(frozen=True)
class Source:
    path: str
    format: str = "auto"
    columns: tuple[tuple[str, str], ...] = ()  # (role, column) pairs; roles not listed use their own name
    aligned: str = ""
    split: str = "train"
    streaming: bool = False
    limit: int = 0
    skip: int = 0  # leave out the first records (e.g. the ones a held-out set uses)
    skip_bad: bool = False
    explode: str = ""  # a list column whose items are the records (XQuAD: ``paragraphs``, one record per paragraph)

    @classmethod
    def from_config(cls, block: Any) -> Source:
        """From a config block (ConfigDict/dict) or a plain path string."""
        if isinstance(block, str):
            return cls(path=block)
        d = dict(block)
        unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise JaxtransError(
                f"data source keys {sorted(unknown)} are unknown; use path, format, columns, "
                "aligned, split, streaming, limit, skip, skip_bad, explode"
            )
        if "columns" in d:
            d["columns"] = tuple(sorted(dict(d["columns"]).items()))
        src = cls(**d)
        if src.format not in FORMATS:
            raise JaxtransError(f"data format {src.format!r} of {src.path} is not one of {', '.join(FORMATS)}")
        if not src.path:
            raise JaxtransError("a data source has an empty path")
        for key in ("limit", "skip"):
            value = getattr(src, key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise JaxtransError(f"data source {src.path}: {key}={value!r} must be a whole number >= 0")
        return src

    def column(self, role: str) -> str:
        return dict(self.columns).get(role, role)


@dataclasses.dataclass
class ReadStats:
    """What a read kept and skipped; reported, never silent."""

    records: int = 0
    skipped: int = 0
    first_problems: list[str] = dataclasses.field(default_factory=list)

    def skip(self, problem: str) -> None:
        self.skipped += 1
        if len(self.first_problems) < 5:
            self.first_problems.append(problem)


def _files(path: str) -> list[str]:
    if os.path.isdir(path):
        found = sorted(p for p in glob.glob(os.path.join(path, "**", "*"), recursive=True) if os.path.isfile(p))
        found = [p for p in found if os.path.splitext(p)[1] in _EXT]
    elif any(c in path for c in "*?["):
        found = sorted(glob.glob(path, recursive=True))
    else:
        if not os.path.isfile(path):
            raise JaxtransError(f"data file {path} does not exist; fix the stage's source path")
        return [path]
    if not found:
        raise JaxtransError(f"no data files match {path}; fix the stage's source path")
    return found


def content_digest(src: Source, whole_below: int = 1 << 30) -> str:
    """A hash of what ``src`` reads: every local file's name and bytes (files over ``whole_below`` bytes: size
    plus the first and last 16 MiB); hub and embedded sources by name (the hub by its revision in the path)."""
    import hashlib

    if src.path.startswith(("hf:", "embedded:")):
        return src.path
    h = hashlib.sha256()
    for path in _files(src.path) + ([src.aligned] if src.aligned else []):
        size = os.path.getsize(path)
        h.update(f"{os.path.basename(path)}:{size}".encode())
        with open(path, "rb") as f:
            if size <= whole_below:
                for block in iter(lambda: f.read(1 << 24), b""):
                    h.update(block)
            else:
                h.update(f.read(1 << 24))
                f.seek(size - (1 << 24))
                h.update(f.read())
    return h.hexdigest()[:16]


def _format(path: str, declared: str) -> str:
    if declared != "auto":
        return declared
    fmt = _EXT.get(os.path.splitext(path)[1].lower())
    if fmt is None:
        raise JaxtransError(
            f"cannot tell the format of {path} from its extension; set format to one of {', '.join(FORMATS[1:])}"
        )
    return fmt


def _lines(path: str) -> Iterator[tuple[int, str]]:
    """(line number, text) with a file:line error for bytes that are not UTF-8."""
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                yield lineno, raw.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError as e:
                where = f"{path}:{lineno}"
                raise JaxtransError(f"{where}: not UTF-8 ({e.reason} at byte {e.start}); re-encode the file") from None


TOO_DEEP = "JSON nested too deeply for the parser (about 1,000 levels at most); flatten the record"
CSV_FIELD_LIMIT = 2**31 - 1  # a long document in one field is data, not an attack (Python's default: 131,072)


def _raw_records(path: str, fmt: str) -> Iterator[tuple[str, Any]]:
    """(where, record) of one local file; malformed syntax raises with file:line."""
    if os.path.getsize(path) == 0:
        raise JaxtransError(f"{path} is empty; remove it from the source or give it data")
    if fmt == "text":
        for lineno, line in _lines(path):
            if line.strip():
                yield f"{path}:{lineno}", {"text": line}
    elif fmt == "jsonl":
        for lineno, line in _lines(path):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                rec = _Malformed(f"malformed JSON ({e.msg} at column {e.colno})")
            except RecursionError:
                rec = _Malformed(TOO_DEEP)
            yield f"{path}:{lineno}", rec
    elif fmt == "json":
        text = "\n".join(line for _, line in _lines(path))
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise JaxtransError(
                f"{path}:{e.lineno}: malformed JSON ({e.msg}); the whole file is one JSON value"
            ) from None
        except RecursionError:
            raise JaxtransError(f"{path}: {TOO_DEEP}") from None
        if isinstance(data, dict):  # {"data": [...]} or one record
            lists = [v for v in data.values() if isinstance(v, list)]
            data = lists[0] if len(lists) == 1 else [data]
        if not isinstance(data, list):
            raise JaxtransError(f"{path}: expected a JSON list of records, found {type(data).__name__}")
        for i, rec in enumerate(data):
            yield f"{path}: record {i}", rec
    elif fmt == "csv":
        text = "\n".join(line for _, line in _lines(path))
        csv.field_size_limit(CSV_FIELD_LIMIT)
        reader = csv.DictReader(io.StringIO(text), delimiter="\t" if path.endswith(".tsv") else ",")
        try:
            for rec in reader:
                yield f"{path}:{reader.line_num}", rec
        except csv.Error as e:
            raise JaxtransError(f"{path}:{reader.line_num + 1}: malformed CSV ({e}); fix the file") from None
    elif fmt == "parquet":
        import datasets
        import pyarrow.parquet as pq

        try:
            pq.ParquetFile(path)  # before datasets, which logs its own failure first
        except Exception as e:
            raise JaxtransError(f"{path} is not a readable parquet file ({e}); check its format= or the file") from None
        for i, rec in enumerate(datasets.load_dataset("parquet", data_files=path, split="train", streaming=True)):
            yield f"{path}: row {i}", rec
    else:
        raise JaxtransError(f"unknown format {fmt!r}")


class _Malformed:
    def __init__(self, problem: str):
        self.problem = problem


def _hub_records(src: Source) -> Iterator[tuple[str, Any]]:
    import datasets
    import jax

    name, _, config = src.path[len("hf:") :].partition(":")
    try:
        ds = datasets.load_dataset(name, config or None, split=src.split, streaming=True)
    except Exception as e:  # network, auth, unknown dataset: one line the user can act on
        raise JaxtransError(f"could not open hub dataset {name!r} ({type(e).__name__}: {e})") from None
    if jax.process_count() > 1:
        from datasets.distributed import split_dataset_by_node

        ds = split_dataset_by_node(ds, rank=jax.process_index(), world_size=jax.process_count())
    for i, rec in enumerate(ds):
        yield f"{src.path}: row {i}", rec


def _aligned_records(src: Source) -> Iterator[tuple[str, Any]]:
    if not os.path.isfile(src.aligned):
        raise JaxtransError(f"aligned file {src.aligned} does not exist; fix the source's aligned path")
    left, right = list(_lines(src.path)), list(_lines(src.aligned))
    if len(left) != len(right):
        raise JaxtransError(
            f"{src.path} has {len(left)} lines but {src.aligned} has {len(right)}; aligned files need equal counts"
        )
    if not left:
        raise JaxtransError(f"{src.path} is empty; remove it from the source or give it data")
    for (n, a), (_, b) in zip(left, right, strict=True):
        yield f"{src.path}:{n}", {"src": a, "tgt": b}


def _exploded(raw: Iterator[tuple[str, Any]], column: str) -> Iterator[tuple[str, Any]]:
    """Each item of the list in ``column`` as a record of its own (a record without that list is malformed)."""
    for where, rec in raw:
        items = _lookup(rec, column) if isinstance(rec, dict) else None
        if not isinstance(items, list):
            yield where, _Malformed(f"no list column {column!r} to explode")
            continue
        for j, item in enumerate(items):
            yield f"{where}, {column}[{j}]", item


# what the roles the library reads must hold (other columns, such as ids, pass as they are): lists of messages
# or choices; a question's turns (one text or a list); a multiple-choice answer (the choice, or its index); text
LIST_ROLES = ("conversations", "messages", "choices")
TEXT_ROLES = ("text", "src", "tgt", "query", "en_query", "en_answer", "prompt", "instruction", "input", "response",
              "target_instruction", "target_response", "output", "system", "question", "english", "target")  # fmt: skip


def _type_problem(role: str, column: str, value: Any) -> str | None:
    """Why ``value`` cannot be the ``role`` (None when it can): the wrong type, or text that is not Unicode."""
    if role in LIST_ROLES:
        ok = isinstance(value, list)
    elif role == "answer":
        ok = isinstance(value, (str, int)) and not isinstance(value, bool)
    elif role == "turns":
        ok = isinstance(value, (str, list))
    elif role in TEXT_ROLES:
        ok = isinstance(value, str)
    else:
        return None
    if not ok:
        want = "a list" if role in LIST_ROLES else "text"
        return f"column {column!r} ({role}) holds {type(value).__name__} {str(value)[:40]!r}, not {want}"
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as e:
            return f"column {column!r} ({role}) holds a lone surrogate {value[e.start]!r} at character {e.start}"
    return None


def _lookup(rec: dict, column: str) -> Any:
    value: Any = rec
    for part in column.split("."):
        if isinstance(value, dict) and part in value:
            value = value[part]
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            return None
    return value


def _roles(
    src: Source, where: str, rec: Any, required: Sequence[str], optional: Sequence[str]
) -> tuple[dict[str, Any], str | None]:
    """(the record's roles, or why it cannot give them)."""
    if isinstance(rec, _Malformed):
        return {}, rec.problem
    if not isinstance(rec, dict):
        return {}, f"a record must be an object with columns, found {type(rec).__name__}"
    out = {"_where": where}
    for role in list(required) + list(optional):
        value = _lookup(rec, src.column(role))
        if value is None or (isinstance(value, str) and not value.strip()) or value == []:
            if role in required:
                cols = ", ".join(map(str, rec)) or "none"
                return out, f"no {src.column(role)!r} column for {role!r} (columns: {cols})"
            continue
        problem = _type_problem(role, src.column(role), value)
        if problem is not None:
            return out, problem
        out[role] = value
    return out, None


def read(
    src: Source,
    required: Sequence[str],
    optional: Sequence[str] = (),
    stats: ReadStats | None = None,
    process: tuple[int, int] | None = None,
) -> Iterator[dict[str, Any]]:
    """Records with the ``required`` roles (non-empty) and whatever ``optional`` roles the data has.

    A record that is malformed or lacks a required column raises with its file
    and line, or is counted in ``stats`` and skipped when ``src.skip_bad``.
    ``process`` = (index, count) keeps every count-th record (per-host reading).
    """
    from jaxtrans.data import embedded

    stats = stats if stats is not None else ReadStats()
    pid, nproc = process or (0, 1)
    if src.path.startswith("embedded:"):
        raw: Iterator[tuple[str, Any]] = embedded.records(src.path[len("embedded:") :])
    elif src.path.startswith("hf:"):
        raw, (pid, nproc) = _hub_records(src), (0, 1)  # the hub stream is already split by node
    elif src.aligned:
        raw = _aligned_records(src)
    else:
        raw = (r for f in _files(src.path) for r in _raw_records(f, _format(f, src.format)))
    if src.explode:
        raw = _exploded(raw, src.explode)
    kept = 0
    for n, (where, rec) in enumerate(raw):
        stop.check()  # SIGTERM: between records
        out, problem = _roles(src, where, rec, required, optional)
        if problem is not None:
            if not src.skip_bad:
                raise JaxtransError(f"{where}: {problem}; fix the data, map the column, or set skip_bad")
            stats.skip(f"{where}: {problem}")
            continue
        if n < src.skip or n % nproc != pid:
            continue
        stats.records += 1
        yield out
        kept += 1
        if src.limit and kept >= src.limit:
            return
