"""Every data shape the seed team used and raftune writes, loaded from any data format, and normalised.

Formats (`read_records`, the one loader of every data input: data.raft, data.qac, data.paragraphs, RAFT test sets):
  JSON (.json, a list of objects), JSONL (.jsonl, one object a line), an Arrow file (.arrow, stream or file format),
  Parquet (.parquet), or a datasets `save_to_disk` folder (one split).

Shapes:
  paragraphs      [{"paragraph"}], or [{"text"}] (raftune's docs_*.jsonl and chunks.jsonl)
  qac             [{"question", "answer", "context"}]
  raft            gorilla/raft rows: id, type, question, context {"sentences": [[doc, ...]], "title": [[...]]},
                  oracle_context, cot_answer, instruction
  raft-repr       the same rows with `context` as a string holding a Python/numpy repr (the seed's hand-cleaned file)
  raft-documents  raftune's normalised RAFT rows (`data clean`'s clean.jsonl): question, documents, oracle_context,
                  cot_answer
  completion      [{"prompt", "completion"}] (raftune's completion_*.jsonl): training text, documents inside the prompt
  chat            [{"messages": [{"role", "content"}, ...]}] (raftune's chat_*.jsonl): the same as chat turns

All normalise to `Row` (question, documents, oracle index or None, reasoning answer, final answer); a completion or
chat row's "question" is its whole user turn, and it has no separate documents.
"""

from __future__ import annotations

import ast
import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path

from raftune import RaftuneError
from raftune.answer import final_answer, has_final_answer

RAFT_FIELDS = ("question", "context", "oracle_context", "cot_answer")
DOCUMENTS_FIELDS = ("question", "documents", "oracle_context", "cot_answer")
FORMATS = ("JSON (.json, a list of objects), JSONL (.jsonl), an Arrow file (.arrow), Parquet (.parquet) "
           "or a datasets save_to_disk folder")
# which config key takes which shape; completion and chat rows are training text, which no key takes
KEYS = {"raft": "data.raft", "raft-repr": "data.raft", "raft-documents": "data.raft", "qac": "data.qac",
        "paragraphs": "data.paragraphs"}
EXPECTED = {"data.raft": f"RAFT rows [{', '.join(RAFT_FIELDS)}]", "data.qac": "QAC triplets [question, answer, context]",
            "data.paragraphs": "paragraphs [paragraph] or [text]"}


@dataclass
class Row:
    question: str | None
    documents: list[str]
    oracle_index: int | None
    cot_answer: str | None
    final_answer: str | None

    def to_dict(self) -> dict:
        return asdict(self)


def _json_records(path: Path) -> list:
    # json, not an Arrow reader: an Arrow schema would unify the rows, turning a row's missing field into a null
    # and a row of another type into an unreadable file, where the checks below name the row
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise RaftuneError(f"{path}: not UTF-8 text (byte {err.start}: {err.reason})") from None
    if path.suffix.lower() == ".jsonl":
        records = []
        # lines end at "\n" only: str.splitlines() would also cut at U+2028 or U+0085 inside a JSON string, which
        # json.dumps(ensure_ascii=False) leaves unescaped (the seed's PDF paragraphs hold them)
        for n, line in enumerate(text.split("\n")):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as err:
                    raise RaftuneError(f"{path}: row {n}: not valid JSON ({err.msg}); expected one JSON object a line") \
                        from None
        return records
    try:
        records = json.loads(text)
    except json.JSONDecodeError as err:
        raise RaftuneError(f"{path}: not valid JSON ({err}); expected a JSON list of objects") from None
    if not isinstance(records, list):
        raise RaftuneError(f"{path}: expected a JSON list of objects, got a JSON {type(records).__name__}")
    return records


def _arrow_table(path: Path) -> tuple[list[dict], list[str]]:
    """An Arrow stream file (what datasets writes, the seed's data.arrow) or an Arrow IPC file (pyarrow/feather)."""
    import pyarrow as pa

    with pa.memory_map(str(path)) as source:
        try:
            table = pa.ipc.open_stream(source).read_all()
        except pa.ArrowInvalid:
            source.seek(0)
            table = pa.ipc.open_file(source).read_all()
        return table.to_pylist(), table.column_names


def _parquet_table(path: Path) -> tuple[list[dict], list[str]]:
    import pyarrow.parquet as pq

    table = pq.read_table(str(path))
    return table.to_pylist(), table.column_names


def _disk_table(path: Path) -> tuple[list[dict], list[str]]:
    import datasets

    data = datasets.load_from_disk(str(path))
    if isinstance(data, datasets.DatasetDict):
        raise RaftuneError(f"{path}: a DatasetDict with splits {list(data)}; pass one split's folder "
                           f"({path / next(iter(data))})")
    return data.to_list(), data.column_names


TABLES = {".arrow": (_arrow_table, "an Arrow file"), ".parquet": (_parquet_table, "a Parquet file")}


def read_records(path: str | Path) -> tuple[list[dict], list[str]]:
    """Raw records and column names of a data file in any of FORMATS; one line naming the file for anything else."""
    path = Path(path)
    if not path.exists():
        raise RaftuneError(f"data file not found: {path}")
    suffix = path.suffix.lower()
    if path.is_dir() or suffix in TABLES:
        read, what = (_disk_table, "a datasets save_to_disk folder") if path.is_dir() else TABLES[suffix]
        try:
            records, columns = read(path)
        except RaftuneError:
            raise
        except Exception as err:  # pyarrow and datasets raise several unrelated types for an unreadable file
            reason = str(err).splitlines()[0][:200] if str(err) else ""
            raise RaftuneError(f"{path}: not readable as {what} ({type(err).__name__}: {reason})") from None
        return records, list(columns)
    if suffix not in (".json", ".jsonl"):
        raise RaftuneError(f"{path}: unknown data format '{path.suffix or path.name}' (expected {FORMATS})")
    records = _json_records(path)
    for n, record in enumerate(records):
        if not isinstance(record, dict):
            raise RaftuneError(f"{path}: row {n}: expected an object, got {type(record).__name__}")
    columns = list(dict.fromkeys(key for record in records for key in record))
    return records, columns


def detect_shape(columns: list[str], records: list[dict], path) -> str:
    if set(RAFT_FIELDS) <= set(columns):
        first = next((r["context"] for r in records if r.get("context") is not None), None)
        return "raft-repr" if isinstance(first, str) else "raft"
    if set(DOCUMENTS_FIELDS) <= set(columns):
        return "raft-documents"
    if {"question", "answer", "context"} <= set(columns):
        return "qac"
    if "paragraph" in columns or "text" in columns:
        return "paragraphs"
    if {"prompt", "completion"} <= set(columns):
        return "completion"
    if "messages" in columns:
        return "chat"
    raise RaftuneError(f"{path}: unknown shape with columns {columns} (expected paragraphs [paragraph] or [text], "
                       f"QAC [question, answer, context], RAFT [{', '.join(RAFT_FIELDS)}, ...] or "
                       f"[{', '.join(DOCUMENTS_FIELDS)}], completion [prompt, completion] or chat [messages])")


def read_for(path, key: str) -> tuple[str, list[dict], list[str]]:
    """(shape, records, columns) of a file given under config `key`; one line naming the key that takes it if not."""
    records, columns = read_records(path)
    shape = detect_shape(columns, records, path)
    if KEYS.get(shape) != key:
        goes = f"this file goes in {KEYS[shape]}" if shape in KEYS else "no data key takes it (it is training text)"
        raise RaftuneError(f"{key}: {path} holds {shape} rows (columns: {', '.join(columns)}); {key} takes "
                           f"{EXPECTED[key]}; {goes}")
    return shape, records, columns


# numpy's repr of an object array: array([...], dtype=object); the inner call may be nested
def _strip_array_calls(node: ast.AST) -> ast.AST:
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "array" and node.args:
        return _strip_array_calls(node.args[0])
    for field, value in ast.iter_fields(node):
        if isinstance(value, list):
            setattr(node, field, [_strip_array_calls(v) if isinstance(v, ast.AST) else v for v in value])
        elif isinstance(value, ast.AST):
            setattr(node, field, _strip_array_calls(value))
    return node


def parse_context_repr(text: str) -> dict:
    """`"{'sentences': array([array(['a', 'b'], dtype=object)], dtype=object), ...}"` -> a dict of lists.

    Parsed with Python's own parser (strings keep their quotes, apostrophes and escaped newlines exactly), the
    `array(...)` calls replaced by their first argument, then `ast.literal_eval`: nothing is executed.
    """
    try:
        tree = ast.parse(text.strip(), mode="eval")
        value = ast.literal_eval(_strip_array_calls(tree.body))
    except (SyntaxError, ValueError, TypeError) as err:
        raise ValueError(f"not a Python literal with array(...) calls ({type(err).__name__}: {err})") from None
    except (RecursionError, MemoryError):  # Python's parser gives up on expressions nested thousands deep
        raise ValueError("nested too deeply to be a context (not a Python literal with array(...) calls)") from None
    if not isinstance(value, dict) or "sentences" not in value:
        raise ValueError("expected a dict with 'sentences'")
    return value


def _documents(context) -> list[str]:
    sentences = context["sentences"]
    docs = [doc for group in sentences for doc in group] if sentences and isinstance(sentences[0], (list, tuple)) \
        else list(sentences)
    if not all(isinstance(doc, str) for doc in docs):
        raise ValueError("documents must be strings")
    return docs


def squash(text: str) -> str:
    """Whitespace collapsed and typographic quotes made plain: how the seed's quotes differ from their context."""
    text = text.translate(str.maketrans({"“": '"', "”": '"', "„": '"', "‘": "'", "’": "'", "‚": "'", "«": '"', "»": '"'}))
    return re.sub(r"\s+", " ", text).strip()


def oracle_index(documents: list[str], oracle: str) -> int | None:
    for i, doc in enumerate(documents):
        if doc == oracle:
            return i
    wanted = squash(oracle)
    return next((i for i, doc in enumerate(documents) if squash(doc) == wanted), None)


def _require_str(record: dict, key: str) -> str:
    value = record.get(key)
    if not isinstance(value, str):
        raise KeyError(key) if value is None else ValueError(f"field '{key}' must be a string, got {type(value).__name__}")
    return value


def _chat_turns(record: dict) -> tuple[str, str | None]:
    """(the first user turn, the last assistant turn) of a chat row."""
    turns = record.get("messages")
    if turns is None:
        raise KeyError("messages")
    if not isinstance(turns, list) or not all(isinstance(t, dict) and isinstance(t.get("content"), str) for t in turns):
        raise ValueError("field 'messages' must be a list of {role, content} turns")
    user = next((t["content"] for t in turns if t.get("role") == "user"), None)
    if user is None:
        raise ValueError("field 'messages' has no user turn")
    return user, next((t["content"] for t in reversed(turns) if t.get("role") == "assistant"), None)


def _row_with_answer(question: str | None, documents: list[str], oracle: int | None, cot: str | None) -> Row:
    return Row(question, documents, oracle, cot, final_answer(cot) if cot and has_final_answer(cot) else None)


def normalise_record(record: dict, shape: str) -> Row:
    """One record of a known shape -> Row; raises KeyError(field) or ValueError(reason)."""
    if shape == "paragraphs":
        return Row(None, [_require_str(record, "text" if "text" in record and "paragraph" not in record
                                       else "paragraph")], 0, None, None)
    if shape == "qac":
        answer = _require_str(record, "answer")
        return Row(_require_str(record, "question"), [_require_str(record, "context")], 0, None, answer)
    if shape == "completion":
        return _row_with_answer(_require_str(record, "prompt"), [], None, _require_str(record, "completion"))
    if shape == "chat":
        user, assistant = _chat_turns(record)
        return _row_with_answer(user, [], None, assistant)
    if shape == "raft-documents":
        documents = record.get("documents")
        if not isinstance(documents, list) or not all(isinstance(doc, str) for doc in documents):
            raise KeyError("documents") if documents is None else ValueError("field 'documents' must be a list of strings")
        cot = _require_str(record, "cot_answer")
        return _row_with_answer(_require_str(record, "question"), documents,
                                oracle_index(documents, _require_str(record, "oracle_context")), cot)
    context = record.get("context")
    if context is None:
        raise KeyError("context")
    if shape == "raft-repr":
        if not isinstance(context, str):
            raise ValueError("field 'context' must be a string holding a Python repr")
        try:
            context = parse_context_repr(context)
        except ValueError as err:
            raise ValueError(f"field 'context': {err}") from None
    if not isinstance(context, dict) or "sentences" not in context:
        raise ValueError("field 'context' must be {'sentences': [[...]], 'title': [[...]]}")
    documents = _documents(context)
    cot = _require_str(record, "cot_answer")
    return _row_with_answer(_require_str(record, "question"), documents,
                            oracle_index(documents, _require_str(record, "oracle_context")), cot)


def load_rows(path: str | Path, skip_bad: bool = False) -> tuple[str, list[Row], list[dict], list[str]]:
    """(shape, rows, skipped, columns). A bad row raises an error naming file, row and field unless `skip_bad`,
    which instead returns it in `skipped` as {"row", "field", "error"}; nothing is dropped silently."""
    records, columns = read_records(path)
    shape = detect_shape(columns, records, path)
    rows, skipped = [], []
    for n, record in enumerate(records):
        try:
            rows.append(normalise_record(record, shape))
        except (KeyError, ValueError) as err:
            field = err.args[0] if isinstance(err, KeyError) else str(err).split("'")[1] if "'" in str(err) else "?"
            reason = f"missing field '{field}'" if isinstance(err, KeyError) else str(err)
            if not skip_bad:
                raise RaftuneError(f"{path}: row {n}: {reason}") from None
            skipped.append({"row": n, "field": field, "error": reason})
    return shape, rows, skipped, columns
