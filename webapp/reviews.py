"""SQLite review store: reviewers' verdicts on generated findings and reports.

Storage model
-------------
* `events` is an append-only log (triggers refuse UPDATE and DELETE). Every save and every undo
  appends one row: id, ts (UTC ISO 8601), reviewer, dataset, study_id, report_id, finding_index
  (NULL for report-level verdicts), kind, payload (JSON).
* `latest` is the current state, maintained in the same transaction as the event that changes it:
  one row per (dataset, study_id, report_id, finding, reviewer) pointing at the event whose
  payload is the current verdict. The view `current_verdicts` joins it with the log.
* Undo appends an `undo` event whose payload is the state before the most recent verdict that is
  not yet undone (or `{"cleared": true}` when there was none); calling it again steps further back.

Durability: WAL journal with `synchronous=FULL`; a save returns its event id only after COMMIT,
so an acknowledged verdict survives a killed process (and, with FULL, a power cut). Several
processes may write at once: writers take `BEGIN IMMEDIATE` and wait up to `BUSY_TIMEOUT_MS`.

Text (comments, finding text, omissions) is stored verbatim, any Unicode, up to `MAX_TEXT_CHARS`.
NUL (U+0000) and lone surrogates are refused with a ValueError: people do not type them, they
come from corrupted pastes, and spreadsheets and C-string tools truncate at them.

Exports: JSONL is exact (native JSON types; U+2028, U+2029 and U+0085 are written as JSON escapes so
that any line splitter sees one record per line). CSV is for spreadsheets: UTF-8 with a BOM, and any
text cell that starts with `=`, `+`, `-`, `@`, tab, carriage return or an apostrophe gets one
leading apostrophe, so a spreadsheet never evaluates it as a formula (OWASP "CSV injection").
To read the exact text back from the CSV, drop one leading apostrophe where present.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
import tempfile
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any, Literal

from model_backend.boxes import model_to_image_box
from model_backend.types import Box, Report
from webapp.database import Database, ReviewStoreError
from webapp.schema import CLEARED, KIND_FINDING, KIND_REPORT, KIND_UNDO, now_utc, replay_stack, set_latest

DEFAULT_DB_NAME = "reviews.sqlite"
MAX_TEXT_CHARS = 1_000_000
MAX_NAME_CHARS = 200

TEXT_VERDICTS = ("correct", "false_finding", "wrong_location", "wrong_severity", "unsupported_comparison", "other")
SIGNIFICANCES = ("significant", "insignificant")
BOX_VERDICTS = ("correct", "wrong_place", "wrong_extent", "missing_box", "box_not_needed")


# Raw line separators that JSON allows inside strings but `str.splitlines` splits on: escape them in JSONL.
JSONL_LINE_BREAKS = str.maketrans({"\u2028": "\\u2028", "\u2029": "\\u2029", "\x85": "\\u0085"})
CSV_FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r", "'")

FINDING_COLUMNS = (
    "dataset", "study_id", "report_id", "finding_index", "finding_text", "context", "backend", "model_id",
    "image_width", "image_height", "model_boxes", "image_boxes", "reviewer", "first_ts", "last_ts",
    "text_verdict", "significance", "box_verdict", "comment", "event_id",
)  # fmt: skip
REPORT_COLUMNS = (
    "dataset", "study_id", "report_id", "reviewer", "first_ts", "last_ts", "rating", "omissions", "comment", "event_id",
)  # fmt: skip


# ----------------------------------------------------------------------------- validation


def _check_text(value: object, name: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{name} must be text, got {type(value).__name__}")
    if len(value) > MAX_TEXT_CHARS:
        raise ValueError(f"{name} is {len(value):,} characters long; the limit is {MAX_TEXT_CHARS:,}")
    if "\x00" in value:
        raise ValueError(f"{name} contains a NUL character (U+0000) at position {value.index(chr(0))}; remove it")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"{name} is not valid Unicode (lone surrogate at position {exc.start})") from exc
    return value


def _check_name(value: object, name: str) -> str:
    text = _check_text(value, name)
    if not text.strip():
        raise ValueError(f"{name} must not be empty")
    if len(text) > MAX_NAME_CHARS:
        raise ValueError(f"{name} is {len(text)} characters long; the limit is {MAX_NAME_CHARS}")
    return text


def _check_choice(value: object, name: str, allowed: tuple[str, ...]) -> str | None:
    if value is not None and value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(allowed)} or None, got {value!r}")
    return value  # type: ignore[return-value]


def _check_index(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"finding_index must be a non-negative integer, got {value!r}")
    return value


def _check_size(value: object, name: str) -> int | None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
        raise ValueError(f"{name} must be a positive integer or None, got {value!r}")
    return value  # type: ignore[return-value]


def _normalise_box(box: object) -> tuple[float, float, float, float]:
    coords = box.as_tuple() if isinstance(box, Box) else box
    if not isinstance(coords, Sequence) or isinstance(coords, str) or len(coords) != 4:
        raise ValueError(f"a model box must be [x0, y0, x1, y1], got {box!r}")
    if not all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in coords):
        raise ValueError(f"model box coordinates must be finite numbers, got {box!r}")
    return tuple(float(v) for v in coords)  # type: ignore[return-value]


def _json_roundtrip(value: object, name: str) -> Any:
    try:
        return json.loads(json.dumps(value, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be JSON-serialisable (strings, finite numbers, lists, dicts): {exc}") from exc


# ----------------------------------------------------------------------------- value types


@dataclass(frozen=True)
class FindingVerdict:
    """One reviewer's judgment of one generated finding, with the context that keeps it meaningful.

    `significance` applies only to errors (a text verdict other than "correct"). `model_boxes`
    are in the model frame, exactly as generated; `image_width`/`image_height` (required when
    there are boxes) map them to the image frame on export.
    """

    text_verdict: str | None = None
    significance: str | None = None
    box_verdict: str | None = None
    comment: str = ""
    finding_text: str = ""
    model_boxes: tuple[tuple[float, float, float, float], ...] | None = None
    image_width: int | None = None
    image_height: int | None = None
    context: dict[str, Any] = field(default_factory=dict)
    backend: str = ""
    model_id: str = ""

    def __post_init__(self) -> None:
        _check_choice(self.text_verdict, "text_verdict", TEXT_VERDICTS)
        _check_choice(self.significance, "significance", SIGNIFICANCES)
        _check_choice(self.box_verdict, "box_verdict", BOX_VERDICTS)
        if self.significance is not None and self.text_verdict in (None, "correct"):
            raise ValueError(
                f"significance applies only to errors, but text_verdict is {self.text_verdict!r}; "
                "set significance to None or choose an error verdict"
            )
        for name in ("comment", "finding_text", "backend", "model_id"):
            _check_text(getattr(self, name), name)
        _check_size(self.image_width, "image_width")
        _check_size(self.image_height, "image_height")
        if self.model_boxes is not None:
            if isinstance(self.model_boxes, str) or not isinstance(self.model_boxes, Iterable):
                raise ValueError(f"model_boxes must be a list of [x0, y0, x1, y1] or None, got {self.model_boxes!r}")
            object.__setattr__(self, "model_boxes", tuple(_normalise_box(b) for b in self.model_boxes))
            if self.model_boxes and (self.image_width is None or self.image_height is None):
                raise ValueError("model_boxes need image_width and image_height to be mapped to the image frame")
        if not isinstance(self.context, Mapping):
            raise ValueError(f"context must be a dict, got {type(self.context).__name__}")
        object.__setattr__(self, "context", _json_roundtrip(dict(self.context), "context"))

    @classmethod
    def for_finding(cls, report: Report, finding_index: int, **verdict: Any) -> FindingVerdict:
        """A verdict on `report.findings[finding_index]`, carrying its text, boxes, size, context and model."""
        if _check_index(finding_index) >= len(report.findings):
            raise ValueError(f"the report has {len(report.findings)} findings; there is no finding {finding_index}")
        finding = report.findings[finding_index]
        boxes = None if finding.model_boxes is None else [b.as_tuple() for b in finding.model_boxes]
        return cls(
            finding_text=finding.text,
            model_boxes=boxes,  # type: ignore[arg-type]
            image_width=report.image_width,
            image_height=report.image_height,
            context=asdict(report.context),
            backend=report.backend.name,
            model_id=report.backend.model_id,
            **verdict,
        )

    def image_boxes(self) -> list[list[float]] | None:
        """The model boxes in image pixels (via `model_to_image_box`), rounded to 0.1 px."""
        if self.model_boxes is None:
            return None
        size = (self.image_width, self.image_height)  # both set whenever there are boxes (checked on creation)
        return [[round(v, 1) for v in model_to_image_box(Box(*b), *size).as_tuple()] for b in self.model_boxes]

    def to_payload(self) -> dict[str, Any]:
        payload = asdict(self)
        payload["model_boxes"] = None if self.model_boxes is None else [list(b) for b in self.model_boxes]
        return payload

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any]) -> FindingVerdict:
        """Inverse of `to_payload`; keys missing in older events (e.g. significance) take their defaults."""
        return cls(**{k: payload[k] for k in cls.__dataclass_fields__ if k in payload})


@dataclass(frozen=True)
class Omission:
    """A finding the report should have contained."""

    text: str
    significance: str | None = None

    def __post_init__(self) -> None:
        if not _check_text(self.text, "omission text").strip():
            raise ValueError("omission text must not be empty")
        _check_choice(self.significance, "omission significance", SIGNIFICANCES)


@dataclass(frozen=True)
class ReportVerdict:
    """One reviewer's judgment of a whole report: omissions, overall rating 1-5, comment.

    `omissions` accepts `Omission`s or dicts `{"text": ..., "significance": ...}`.
    """

    omissions: tuple[Omission, ...] = ()
    rating: int | None = None
    comment: str = ""

    def __post_init__(self) -> None:
        if isinstance(self.omissions, str | Mapping) or not isinstance(self.omissions, Iterable):
            raise ValueError(f"omissions must be a list of {{text, significance}}, got {self.omissions!r}")
        items = []
        for item in self.omissions:
            if isinstance(item, Omission):
                items.append(item)
            elif isinstance(item, Mapping) and set(item) <= {"text", "significance"} and "text" in item:
                items.append(Omission(**item))
            else:
                raise ValueError(f"an omission must be {{'text': ..., 'significance': ...}}, got {item!r}")
        object.__setattr__(self, "omissions", tuple(items))
        if self.rating is not None and (
            isinstance(self.rating, bool) or not isinstance(self.rating, int) or not 1 <= self.rating <= 5
        ):
            raise ValueError(f"rating must be an integer from 1 to 5 or None, got {self.rating!r}")
        _check_text(self.comment, "comment")

    def to_payload(self) -> dict[str, Any]:
        return asdict(self) | {"omissions": [asdict(o) for o in self.omissions]}

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any]) -> ReportVerdict:
        return cls(**{k: payload[k] for k in cls.__dataclass_fields__ if k in payload})


@dataclass(frozen=True)
class Event:
    """One row of the append-only log."""

    id: int
    ts: str
    reviewer: str
    dataset: str
    study_id: str
    report_id: str
    finding_index: int | None
    kind: str
    payload: dict[str, Any]


# ----------------------------------------------------------------------------- the store


class ReviewStore:
    """Verdicts in the review database (`webapp.database`); several processes may share the file.

    Open it on a path (it then owns its connection) or on a `Database` shared with the report store.
    """

    def __init__(self, path_or_db: str | Path | Database) -> None:
        self._owns_db = not isinstance(path_or_db, Database)
        self.db = Database(path_or_db) if not isinstance(path_or_db, Database) else path_or_db
        self.path = self.db.path
        self._conn = self.db.conn
        self._transaction = self.db.transaction
        self._query = self.db.query

    def close(self) -> None:
        if self._owns_db:
            self.db.close()

    def __enter__(self) -> ReviewStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------------- writes

    def _append(self, key: tuple, kind: str, payload: Mapping[str, Any]) -> int:
        dataset, study_id, report_id, finding_index, reviewer = key
        text = json.dumps(payload, ensure_ascii=False, allow_nan=False)
        with self._transaction() as conn:
            event_id = conn.execute(
                """INSERT INTO events (ts, reviewer, dataset, study_id, report_id, finding_index, kind, payload)
                VALUES (?, ?, ?, ?, ?, ?, ?, ?)""",
                (now_utc(), reviewer, dataset, study_id, report_id, finding_index, kind, text),
            ).lastrowid
            assert event_id is not None
            set_latest(conn, key, first_event_id=event_id, event_id=event_id, cleared=False)
        return event_id

    @staticmethod
    def _key(reviewer: str, dataset: str, study_id: str, report_id: str, finding_index: int | None) -> tuple:
        return (
            _check_name(dataset, "dataset"),
            _check_name(study_id, "study_id"),
            _check_name(report_id, "report_id"),
            None if finding_index is None else _check_index(finding_index),
            _check_name(reviewer, "reviewer").strip(),
        )

    def save_finding_verdict(
        self, reviewer: str, dataset: str, study_id: str, report_id: str, finding_index: int, verdict: FindingVerdict
    ) -> int:
        """Append a finding verdict; returns its event id once committed to disk."""
        if not isinstance(verdict, FindingVerdict):
            raise TypeError(f"verdict must be a FindingVerdict, got {type(verdict).__name__}")
        key = self._key(reviewer, dataset, study_id, report_id, _check_index(finding_index))
        return self._append(key, KIND_FINDING, verdict.to_payload())

    def save_report_verdict(
        self, reviewer: str, dataset: str, study_id: str, report_id: str, verdict: ReportVerdict
    ) -> int:
        """Append a report-level verdict; returns its event id once committed to disk."""
        if not isinstance(verdict, ReportVerdict):
            raise TypeError(f"verdict must be a ReportVerdict, got {type(verdict).__name__}")
        return self._append(self._key(reviewer, dataset, study_id, report_id, None), KIND_REPORT, verdict.to_payload())

    def undo_last(
        self, reviewer: str, dataset: str, study_id: str, report_id: str, finding_index: int | None = None
    ) -> int | None:
        """Revert the newest verdict not yet undone (finding_index None = the report verdict).

        Appends an `undo` event whose payload is the restored state or `{"cleared": true}`; returns
        its id, or None when there is nothing to undo.
        """
        key = self._key(reviewer, dataset, study_id, report_id, finding_index)
        dataset, study_id, report_id, finding_index, reviewer = key
        with self._transaction() as conn:
            rows = conn.execute(
                """SELECT id, kind FROM events WHERE dataset = ? AND study_id = ? AND report_id = ?
                AND finding_index IS ? AND reviewer = ? ORDER BY id""",
                (dataset, study_id, report_id, finding_index, reviewer),
            ).fetchall()
            stack = replay_stack(rows)
            if not stack:
                return None
            stack.pop()
            if stack:
                payload = conn.execute("SELECT payload FROM events WHERE id = ?", (stack[-1],)).fetchone()[0]
            else:
                payload = json.dumps(CLEARED)
            event_id = conn.execute(
                """INSERT INTO events (ts, reviewer, dataset, study_id, report_id, finding_index, kind, payload)
                VALUES (?, ?, ?, ?, ?, ?, ?, ?)""",
                (now_utc(), reviewer, dataset, study_id, report_id, finding_index, KIND_UNDO, payload),
            ).lastrowid
            assert event_id is not None
            set_latest(conn, key, first_event_id=rows[0][0], event_id=event_id, cleared=not stack)
        return event_id

    # ------------------------------------------------------------------------- reads

    def finding_verdicts(self, dataset: str, study_id: str, report_id: str, reviewer: str) -> dict[int, FindingVerdict]:
        """Current finding verdicts of one reviewer on one report, by finding index."""
        rows = self._query(
            """SELECT finding_index, payload FROM current_verdicts WHERE dataset = ? AND study_id = ?
            AND report_id = ? AND reviewer = ? AND finding_index IS NOT NULL ORDER BY finding_index""",
            (dataset, study_id, report_id, reviewer.strip()),
        )
        return {index: FindingVerdict.from_payload(json.loads(payload)) for index, payload in rows}

    def report_verdict(self, dataset: str, study_id: str, report_id: str, reviewer: str) -> ReportVerdict | None:
        """Current report-level verdict of one reviewer, or None."""
        rows = self._query(
            """SELECT payload FROM current_verdicts WHERE dataset = ? AND study_id = ? AND report_id = ?
            AND reviewer = ? AND finding_index IS NULL""",
            (dataset, study_id, report_id, reviewer.strip()),
        )
        return ReportVerdict.from_payload(json.loads(rows[0][0])) if rows else None

    def history(self, dataset: str, study_id: str, report_id: str, finding_index: int | None = None) -> list[Event]:
        """All events of a report (all reviewers), oldest first; only one finding's when finding_index is given."""
        sql = (
            "SELECT id, ts, reviewer, dataset, study_id, report_id, finding_index, kind, payload FROM events"
            " WHERE dataset = ? AND study_id = ? AND report_id = ?"
        )
        params: list[Any] = [dataset, study_id, report_id]
        if finding_index is not None:
            sql += " AND finding_index = ?"
            params.append(_check_index(finding_index))
        rows = self._query(sql + " ORDER BY id", params)
        return [Event(*row[:-1], payload=json.loads(row[-1])) for row in rows]

    def reviewers(self) -> list[str]:
        """Everyone who has saved anything, sorted."""
        return [r for (r,) in self._query("SELECT DISTINCT reviewer FROM latest ORDER BY reviewer")]

    def reviewed_study_ids(self, dataset: str, reviewer: str) -> set[str]:
        """Studies where the reviewer has at least one current (not undone) verdict."""
        rows = self._query(
            "SELECT DISTINCT study_id FROM latest WHERE dataset = ? AND reviewer = ? AND cleared = 0",
            (dataset, reviewer.strip()),
        )
        return {r for (r,) in rows}

    def progress(self, dataset: str, reviewer: str, study_ids: Sequence[str]) -> tuple[int, int]:
        """(reviewed, total) over the distinct `study_ids`."""
        wanted = set(study_ids)
        return len(wanted & self.reviewed_study_ids(dataset, reviewer)), len(wanted)

    def next_unreviewed(self, dataset: str, reviewer: str, study_ids: Sequence[str], after: str | None) -> str | None:
        """First study after `after` (in `study_ids` order, wrapping round to `after` itself) not yet reviewed."""
        if not study_ids:
            return None
        done = self.reviewed_study_ids(dataset, reviewer)
        start = study_ids.index(after) + 1 if after in study_ids else 0
        for offset in range(len(study_ids)):
            candidate = study_ids[(start + offset) % len(study_ids)]
            if candidate not in done:
                return candidate
        return None

    # ------------------------------------------------------------------------- agreement

    def agreement(self, dataset: str, study_id: str, report_id: str) -> list[dict[str, Any]]:
        """Per finding: each reviewer's verdicts and whether all who judged a field agree (None if < 2 did)."""
        rows = self._query(
            """SELECT finding_index, reviewer, payload FROM current_verdicts WHERE dataset = ? AND study_id = ?
            AND report_id = ? AND finding_index IS NOT NULL ORDER BY finding_index, reviewer""",
            (dataset, study_id, report_id),
        )
        findings: dict[int, dict[str, Any]] = {}
        for index, reviewer, payload in rows:
            verdict = FindingVerdict.from_payload(json.loads(payload))
            entry = findings.setdefault(index, {"finding_index": index, "finding_text": verdict.finding_text,
                                                "reviewers": {}})  # fmt: skip
            entry["reviewers"][reviewer] = {
                "text_verdict": verdict.text_verdict,
                "significance": verdict.significance,
                "box_verdict": verdict.box_verdict,
            }
        for entry in findings.values():
            for name in ("text_verdict", "box_verdict"):
                values = [v[name] for v in entry["reviewers"].values() if v[name] is not None]
                entry[name.replace("_verdict", "_agree")] = len(set(values)) == 1 if len(values) >= 2 else None
        return list(findings.values())

    def agreement_summary(self, dataset: str, study_id: str, report_id: str) -> dict[str, Any]:
        """Inter-reviewer agreement over a report's findings, for text and box verdicts separately.

        `percent_agreement`: share of findings judged by >= 2 reviewers on which all of them gave
        the same verdict (any number of reviewers). `cohen_kappa`: Cohen's kappa, only when exactly
        two reviewers took part, over the findings both judged; None when undefined (fewer than one
        shared finding, or both used a single identical category throughout, so chance agreement is 1).
        With a handful of findings per report kappa is very noisy: read it together with n.
        """
        per_finding = self.agreement(dataset, study_id, report_id)
        reviewers = sorted({r for entry in per_finding for r in entry["reviewers"]})
        summary: dict[str, Any] = {"reviewers": reviewers}
        for name in ("text_verdict", "box_verdict"):
            agree = [e[name.replace("_verdict", "_agree")] for e in per_finding]
            judged = [a for a in agree if a is not None]
            pairs = [
                (e["reviewers"][reviewers[0]][name], e["reviewers"][reviewers[1]][name])
                for e in per_finding
                if len(reviewers) == 2 and len(e["reviewers"]) == 2 and None not in
                (e["reviewers"][reviewers[0]][name], e["reviewers"][reviewers[1]][name])
            ]  # fmt: skip
            summary[name] = {
                "n": len(judged),
                "percent_agreement": 100.0 * sum(judged) / len(judged) if judged else None,
                "cohen_kappa": cohen_kappa(pairs) if len(reviewers) == 2 else None,
            }
        return summary

    # ------------------------------------------------------------------------- export

    def export_rows(
        self, dataset: str | None = None, reviewer: str | None = None, level: Literal["finding", "report"] = "finding"
    ) -> Iterator[dict[str, Any]]:
        """Current verdicts as flat dicts (native JSON types), one per (report, finding, reviewer)."""
        if level not in ("finding", "report"):
            raise ValueError(f"level must be 'finding' or 'report', got {level!r}")
        sql = (
            "SELECT dataset, study_id, report_id, finding_index, reviewer, first_ts, last_ts, event_id, payload"
            " FROM current_verdicts"
        )
        where = ["finding_index IS NOT NULL" if level == "finding" else "finding_index IS NULL"]
        params: list[Any] = []
        for column, value in (("dataset", dataset), ("reviewer", reviewer)):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value.strip() if column == "reviewer" else value)
        sql += " WHERE " + " AND ".join(where) + " ORDER BY dataset, study_id, report_id, finding_index, reviewer"
        for ds, study_id, report_id, index, name, first_ts, last_ts, event_id, payload in self._query(sql, params):
            common = {"dataset": ds, "study_id": study_id, "report_id": report_id, "reviewer": name,
                      "first_ts": first_ts, "last_ts": last_ts, "event_id": event_id}  # fmt: skip
            if level == "report":
                report = ReportVerdict.from_payload(json.loads(payload))
                yield common | {"rating": report.rating, "omissions": report.to_payload()["omissions"],
                                "comment": report.comment}  # fmt: skip
                continue
            verdict = FindingVerdict.from_payload(json.loads(payload))
            row = common | verdict.to_payload() | {"finding_index": index, "image_boxes": verdict.image_boxes()}
            yield {column: row[column] for column in FINDING_COLUMNS}

    def export(
        self,
        out_path: str | Path,
        fmt: Literal["csv", "jsonl"],
        dataset: str | None = None,
        reviewer: str | None = None,
        level: Literal["finding", "report"] = "finding",
    ) -> int:
        """Write current verdicts to `out_path` (atomically replaced); returns the number of rows.

        `level="finding"` (default): one row per current finding verdict, with image-frame boxes.
        `level="report"`: one row per current report verdict (rating, omissions, comment).
        """
        if fmt not in ("csv", "jsonl"):
            raise ValueError(f"format must be 'csv' or 'jsonl', got {fmt!r}")
        out_path = Path(out_path)
        rows = self.export_rows(dataset, reviewer, level)
        fd, tmp = tempfile.mkstemp(prefix=f".{out_path.name}.", dir=out_path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8-sig" if fmt == "csv" else "utf-8", newline="") as stream:
                count = write_rows(rows, fmt, stream, REPORT_COLUMNS if level == "report" else FINDING_COLUMNS)
                stream.flush()
                os.fsync(stream.fileno())
            os.replace(tmp, out_path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return count


def cohen_kappa(pairs: Sequence[tuple[str, str]]) -> float | None:
    """Cohen's kappa of two raters' labels; None when undefined (no pairs, or chance agreement is 1)."""
    if not pairs:
        return None
    n = len(pairs)
    observed = sum(a == b for a, b in pairs) / n
    first, second = Counter(a for a, _ in pairs), Counter(b for _, b in pairs)
    expected = sum(first[c] * second[c] for c in first) / (n * n)
    return None if expected >= 1.0 else (observed - expected) / (1.0 - expected)


def csv_safe(value: Any) -> Any:
    """A CSV cell that a spreadsheet shows as text: formula-like strings get a leading apostrophe."""
    if isinstance(value, str) and value.startswith(CSV_FORMULA_PREFIXES):
        return "'" + value
    return value


def write_rows(rows: Iterable[dict[str, Any]], fmt: str, stream: IO[str], columns: Sequence[str]) -> int:
    """Write export rows as CSV (JSON-encoded lists/dicts, formula-safe) or JSONL; returns the count."""
    count = 0
    if fmt == "jsonl":
        for row in rows:
            stream.write(json.dumps(row, ensure_ascii=False).translate(JSONL_LINE_BREAKS) + "\n")
            count += 1
        return count
    writer = csv.writer(stream, lineterminator="\r\n")
    writer.writerow(columns)
    for row in rows:
        cells = [json.dumps(v, ensure_ascii=False) if isinstance(v, list | dict) else v for v in map(row.get, columns)]
        writer.writerow(["" if v is None else csv_safe(v) for v in cells])
        count += 1
    return count


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m webapp.reviews", description="Review store tools.")
    commands = parser.add_subparsers(dest="command", required=True)
    export = commands.add_parser("export", help="export current verdicts as CSV or JSONL")
    export.add_argument("--db", required=True, type=Path, help="review database (e.g. reviews.sqlite)")
    export.add_argument("--format", required=True, choices=("csv", "jsonl"))
    export.add_argument("--out", type=Path, help="output file (default: standard output)")
    export.add_argument("--dataset", help="only this dataset")
    export.add_argument("--reviewer", help="only this reviewer")
    export.add_argument("--level", choices=("finding", "report"), default="finding")
    args = parser.parse_args(argv)
    if not args.db.is_file():
        print(f"error: no review database at {args.db}", file=sys.stderr)
        return 2
    try:
        with ReviewStore(args.db) as store:
            if args.out is not None:
                count = store.export(args.out, args.format, args.dataset, args.reviewer, args.level)
            else:
                rows = store.export_rows(args.dataset, args.reviewer, args.level)
                sys.stdout.reconfigure(encoding="utf-8", newline="")  # type: ignore[union-attr]
                columns = REPORT_COLUMNS if args.level == "report" else FINDING_COLUMNS
                count = write_rows(rows, args.format, sys.stdout, columns)
    except (ReviewStoreError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"exported {count} {args.level} verdicts", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
