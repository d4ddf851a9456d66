"""CXRReportGen scoring JSON: request and response codec (pure functions, no HTTP).

Request (pandas "split" layout, as in the CXRReportGen docs)::

    {"input_data": {"columns": ["frontal_image", "indication", ...],
                    "index": [0, 1],
                    "data": [["<base64 PNG/JPEG>", "Dyspnea."], ...]},
     "params": {}}

Columns are taken from `COLUMNS`; `frontal_image` is required. Images are base64 text as the docs'
clients write it (`base64.encodebytes(...).decode("utf-8")`, so line breaks occur) of PNG or JPEG
bytes. Extension: DICOM Part-10 files ("DICM" at byte offset 128) are accepted too. Text sections
may be a string or missing (null, NaN or a blank string), at most
`prompt_limits.MAX_SECTION_CHARS` characters of valid Unicode each. At most `MAX_ROWS` rows per
request; a missing `index` means 0..n-1 (strings of at most `MAX_INDEX_CHARS` or integers).
Integers longer than `MAX_INT_DIGITS` digits are refused where they stand (row and column named),
and JSON nested too deeply for the parser is a 400, like any other malformed body.

Response: a JSON list, one item per request row, ``{"output": findings}`` where findings is
``[[sentence, null | [[x_min, y_min, x_max, y_max], ...]], ...]`` with boxes in the MODEL frame
(normalised to the processor's square centre crop, values in [0, 1], exactly as generated).

Decision on the `output` form: clients in the wild read `output` both as a JSON-encoded string
and as the list itself, so `decode_output` / `decode_response` accept both. We WRITE the
JSON-encoded string form, as the hosted MLflow model does (`encode_response`).
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from model_backend.prompt_limits import text_problem
from model_backend.types import Box, Report

IMAGE_COLUMNS = ("frontal_image", "lateral_image", "prior_image")
TEXT_COLUMNS = ("indication", "technique", "comparison", "prior_report")
COLUMNS = IMAGE_COLUMNS + TEXT_COLUMNS
MAX_ROWS = 10
MAX_BYTES = 60_000_000
MAX_INDEX_CHARS = 200
MAX_INT_DIGITS = 30

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_JPEG_MAGIC = b"\xff\xd8\xff"
_WHITESPACE = b" \t\n\r\v\f"

DecodedFindings = list[tuple[str, list[Box] | None]]


class ProtocolError(ValueError):
    """A request or response that does not follow the scoring protocol.

    `row` is the offending row's index value (None when not about one row), `column` the column
    name (or None), `status` the HTTP status to answer with (400, or 413 for an oversized payload).
    """

    def __init__(self, message: str, *, row: str | int | None = None, column: str | None = None, status: int = 400):
        where = []
        if row is not None:
            where.append(f"row {row!r}")
        if column is not None:
            where.append(f"column {column!r}")
        super().__init__(_printable(f"{', '.join(where)}: {message}" if where else message))
        self.row = _printable(row) if isinstance(row, str) else row
        self.column = None if column is None else _printable(column[:MAX_INDEX_CHARS])
        self.status = status


def _printable(text: str) -> str:
    """`text` with lone surrogates escaped (`\\udc80`), so that the error itself can be sent as UTF-8."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


@dataclass(frozen=True)
class HugeInteger:
    """A JSON integer of more than `MAX_INT_DIGITS` digits, kept unparsed so validation can name its cell."""

    digits: int

    def __repr__(self) -> str:
        return f"an integer of {self.digits} digits"


def _parse_int(text: str) -> int | HugeInteger:
    return HugeInteger(len(text.lstrip("-"))) if len(text) > MAX_INT_DIGITS else int(text)


@dataclass(frozen=True)
class ScoringRow:
    """One request row: decoded image bytes and optional text sections (None = missing)."""

    index: str | int
    frontal_image: bytes
    lateral_image: bytes | None = None
    prior_image: bytes | None = None
    indication: str | None = None
    technique: str | None = None
    comparison: str | None = None
    prior_report: str | None = None


def _load_json(body: bytes | str, max_bytes: int) -> Any:
    if len(body) > max_bytes:
        raise ProtocolError(f"payload is {len(body)} bytes, the limit is {max_bytes}", status=413)
    try:
        return json.loads(body, parse_int=_parse_int)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProtocolError(f"body is not valid JSON: {exc}") from exc
    except RecursionError:
        raise ProtocolError("body is JSON nested too deeply (arrays or objects inside each other)") from None


def _is_missing(value: Any) -> bool:
    return (
        value is None
        or (isinstance(value, float) and math.isnan(value))
        or (isinstance(value, str) and not value.strip())
    )


def _decode_image(value: Any, row: str | int, column: str) -> bytes:
    if not isinstance(value, str):
        raise ProtocolError(f"expected base64 text, got {_kind(value)}", row=row, column=column)
    compact = value.encode("ascii", errors="replace").translate(None, _WHITESPACE)
    try:
        data = base64.b64decode(compact, validate=True)
    except binascii.Error as exc:
        raise ProtocolError(f"invalid base64 ({exc})", row=row, column=column) from exc
    if not (data.startswith(_PNG_MAGIC) or data.startswith(_JPEG_MAGIC) or data[128:132] == b"DICM"):
        raise ProtocolError("decoded bytes are not a PNG, JPEG or DICOM file", row=row, column=column)
    return data


def _decode_text(value: Any, row: str | int, column: str) -> str | None:
    if _is_missing(value):
        return None
    if not isinstance(value, str):
        raise ProtocolError(f"expected text or null, got {_kind(value)}", row=row, column=column)
    problem = text_problem(value)
    if problem is not None:
        raise ProtocolError(f"the text {problem}", row=row, column=column)
    return value


def _kind(value: Any) -> str:
    return repr(value) if isinstance(value, HugeInteger) else type(value).__name__


def _check_columns(columns: Any) -> list[str]:
    if not isinstance(columns, list) or not all(isinstance(c, str) for c in columns):
        raise ProtocolError("input_data.columns must be a list of column names")
    seen: set[str] = set()
    for name in columns:
        if name not in COLUMNS:
            raise ProtocolError(f"unknown column; expected some of {', '.join(COLUMNS)}", column=name)
        if name in seen:
            raise ProtocolError("duplicate column", column=name)
        seen.add(name)
    if "frontal_image" not in seen:
        raise ProtocolError("the frontal_image column is required", column="frontal_image")
    return columns


def _check_index(index: Any, n_rows: int) -> list[str | int]:
    if index is None:
        return list(range(n_rows))
    if not isinstance(index, list) or len(index) != n_rows:
        raise ProtocolError(f"input_data.index must be a list of {n_rows} values, one per data row")
    for value in index:
        if isinstance(value, bool) or not isinstance(value, str | int):
            shown = repr(value) if isinstance(value, HugeInteger) else type(value).__name__
            raise ProtocolError(f"index values must be strings or integers, got {shown}")
        if isinstance(value, str) and (len(value) > MAX_INDEX_CHARS or text_problem(value)):
            raise ProtocolError(f"index strings must be valid text of at most {MAX_INDEX_CHARS} characters")
    return index


def decode_request(body: bytes | str | dict, max_rows: int = MAX_ROWS, max_bytes: int = MAX_BYTES) -> list[ScoringRow]:
    """Parse and validate a scoring request into rows; raises `ProtocolError` naming row and column.

    For a dict body the payload size is the total length of its text cells.
    """
    payload = body if isinstance(body, dict) else _load_json(body, max_bytes)
    if not isinstance(payload, dict) or not isinstance(payload.get("input_data"), dict):
        raise ProtocolError('expected a JSON object {"input_data": {"columns", "index", "data"}, "params": {}}')
    if not isinstance(payload.get("params", {}), dict):
        raise ProtocolError("params must be a JSON object")
    input_data = payload["input_data"]
    columns = _check_columns(input_data.get("columns"))
    data = input_data.get("data")
    if not isinstance(data, list) or not all(isinstance(r, list) for r in data):
        raise ProtocolError("input_data.data must be a list of rows (lists of cells)")
    if not data:
        raise ProtocolError("input_data.data has no rows")
    if len(data) > max_rows:
        raise ProtocolError(f"{len(data)} rows, at most {max_rows} per request")
    index = _check_index(input_data.get("index"), len(data))
    if isinstance(body, dict):
        size = sum(len(cell) for r in data for cell in r if isinstance(cell, str))
        if size > max_bytes:
            raise ProtocolError(f"payload text is {size} characters, the limit is {max_bytes}", status=413)
    rows = []
    for idx, cells in zip(index, data, strict=True):
        if len(cells) != len(columns):
            raise ProtocolError(f"row has {len(cells)} cells for {len(columns)} columns", row=idx)
        values = dict(zip(columns, cells, strict=True))
        if _is_missing(values["frontal_image"]):
            raise ProtocolError("the frontal image is empty", row=idx, column="frontal_image")
        fields: dict[str, Any] = {}
        for name, value in values.items():
            if name in TEXT_COLUMNS:
                fields[name] = _decode_text(value, idx, name)
            else:
                fields[name] = None if _is_missing(value) else _decode_image(value, idx, name)
        rows.append(ScoringRow(index=idx, **fields))
    return rows


def encode_request(rows: Sequence[ScoringRow]) -> dict:
    """Rows -> request dict; images as `base64.encodebytes` text like the docs' clients.

    Columns: frontal_image plus every optional column that some row fills (null elsewhere).
    """
    columns = [c for c in COLUMNS if c == "frontal_image" or any(getattr(r, c) is not None for r in rows)]

    def cell(row: ScoringRow, name: str) -> str | None:
        value = getattr(row, name)
        if name in IMAGE_COLUMNS and value is not None:
            return base64.encodebytes(value).decode("utf-8")
        return value

    return {
        "input_data": {
            "columns": columns,
            "index": [r.index for r in rows],
            "data": [[cell(r, c) for c in columns] for r in rows],
        },
        "params": {},
    }


def report_to_output(report: Report) -> list:
    """A report's findings as the protocol list; model-frame boxes exactly as generated.

    A finding without boxes (None or an empty tuple) is written as `null`.
    """
    return [[f.text, [list(b.as_tuple()) for b in f.model_boxes] if f.model_boxes else None] for f in report.findings]


def encode_response(reports: Sequence[Report]) -> list[dict]:
    """Reports (one per request row, in order) -> `[{"output": "<JSON-encoded findings list>"}, ...]`."""
    return [{"output": json.dumps(report_to_output(r))} for r in reports]


def _decode_box(value: Any, row: int | None, where: str) -> Box:
    if not isinstance(value, list | tuple) or len(value) != 4:
        raise ProtocolError(f"{where}: a box must be [x_min, y_min, x_max, y_max]", row=row, column="output")
    for v in value:
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
            raise ProtocolError(f"{where}: box coordinates must be finite numbers, got {v!r}", row=row, column="output")
    return Box(*(float(v) for v in value))


def decode_output(output: str | list, row: int | None = None) -> DecodedFindings:
    """One row's `output` (JSON string or list) -> [(sentence, model-frame boxes or None), ...]."""
    if isinstance(output, str):
        try:
            output = json.loads(output)
        except json.JSONDecodeError as exc:
            raise ProtocolError(f"output string is not valid JSON: {exc}", row=row, column="output") from exc
    if not isinstance(output, list):
        raise ProtocolError("output must be a list of [sentence, boxes] pairs", row=row, column="output")
    findings: DecodedFindings = []
    for i, item in enumerate(output):
        where = f"finding {i}"
        if not isinstance(item, list | tuple) or len(item) != 2 or not isinstance(item[0], str):
            raise ProtocolError(f"{where}: expected [sentence, null | boxes]", row=row, column="output")
        text, boxes = item
        if boxes is not None and not isinstance(boxes, list | tuple):
            raise ProtocolError(f"{where}: boxes must be null or a list of boxes", row=row, column="output")
        findings.append((text, None if boxes is None else [_decode_box(b, row, where) for b in boxes]))
    return findings


def decode_response(body: bytes | str | list | dict) -> list[DecodedFindings]:
    """A scoring response -> one decoded findings list per row (`row` in errors is the position)."""
    payload = body if isinstance(body, list | dict) else _load_json(body, MAX_BYTES)
    if not isinstance(payload, list):
        raise ProtocolError('expected a JSON list [{"output": ...}, ...]')
    results = []
    for position, item in enumerate(payload):
        if not isinstance(item, dict) or "output" not in item:
            raise ProtocolError('expected an object with an "output" key', row=position)
        results.append(decode_output(item["output"], row=position))
    return results


def error_body(err: ProtocolError) -> dict:
    """The JSON error answer for a rejected request."""
    return {"error": {"message": str(err), "row": err.row, "column": err.column}}
