"""Study manifests (JSONL or CSV) rooted in one folder, and the bundled sample studies.

A manifest row names a study's images by paths relative to the manifest's folder (the dataset
root); every path must stay inside that root. Rows that cannot be used are collected as
`RowError`s so the rest of the manifest still loads. Reference boxes are stored in the row's own
frame ("pixel" or "normalized" to the frontal image); `Dataset.load_study` turns them into
image-frame pixels.
"""

from __future__ import annotations

import csv
import io
import json
import math
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from model_backend.images import load_image_path
from model_backend.types import Box, PromptContext, ReferenceBox, Study, XrayImage, available_views

MANIFEST_NAMES = ("studies.jsonl", "studies.csv")
SECTIONS = ("indication", "technique", "comparison", "prior_report")
IMAGE_FIELDS = ("frontal", "lateral", "prior_frontal")
BOX_FRAMES = ("pixel", "normalized")
MAX_PATH_CHARS = 1024
MAX_STUDY_ID_CHARS = 200


class DatasetError(ValueError):
    """A manifest that cannot be opened at all, or a study id that is not in it."""


@dataclass(frozen=True)
class RowError:
    """A manifest row that was skipped: 1-based line number in the file and the reason."""

    line: int
    message: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.message}"


@dataclass(frozen=True)
class ManifestBox:
    """A reference box exactly as the manifest gives it, in the frame named by `frame`."""

    label: str
    box: Box
    frame: str  # "pixel" (frontal image pixels) or "normalized" ([0, 1] of the frontal image)
    source: str


@dataclass(frozen=True)
class StudyEntry:
    """One manifest row: image paths relative to the dataset root, prompt sections, references."""

    study_id: str
    frontal: str
    lateral: str | None = None
    prior_frontal: str | None = None
    indication: str | None = None
    technique: str | None = None
    comparison: str | None = None
    prior_report: str | None = None
    reference_findings: tuple[str, ...] = ()
    reference_boxes: tuple[ManifestBox, ...] = ()
    attribution: str = ""

    def context(self) -> PromptContext:
        """The default prompt context built from the row's sections."""
        return PromptContext(
            indication=self.indication,
            technique=self.technique,
            comparison=self.comparison,
            prior_report=self.prior_report,
        )

    def effective_context(self, context: PromptContext) -> PromptContext:
        """`context` with the lateral / prior switches off where this row names no such image."""
        return available_views(context, self.lateral is not None, self.prior_frontal is not None)

    def search_text(self) -> str:
        parts = [self.study_id, *(getattr(self, s) or "" for s in SECTIONS), *self.reference_findings]
        parts += [b.label for b in self.reference_boxes] + [self.attribution]
        return "\n".join(parts).casefold()


class Dataset:
    """The usable rows of one manifest, plus the rows that were rejected, with an LRU of loaded studies."""

    def __init__(
        self,
        root: Path,
        name: str,
        entries: list[StudyEntry],
        errors: list[RowError] | None = None,
        *,
        cache_size: int = 8,
        manifest_path: Path | None = None,
    ) -> None:
        self.root = root.resolve()
        self.manifest_path = manifest_path
        self.name = name
        self.entries = entries
        self.errors = errors or []
        self._by_id = {e.study_id: e for e in entries}
        self._cache: OrderedDict[str, Study] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.entries)

    def __contains__(self, study_id: object) -> bool:
        return study_id in self._by_id

    def entry(self, study_id: str) -> StudyEntry:
        try:
            return self._by_id[study_id]
        except KeyError:
            raise DatasetError(f"Study {study_id!r} is not in dataset {self.name!r}.") from None

    def resolve(self, relative: str) -> Path:
        """Absolute path of a manifest path, checked to lie inside the dataset root."""
        return _resolve_inside(self.root, relative)

    def load_study(self, study_id: str) -> Study:
        """Decode a study's images (raises `ImageLoadError`) and convert its reference boxes to pixels."""
        with self._lock:
            if study_id in self._cache:
                self._cache.move_to_end(study_id)
                return self._cache[study_id]
        entry = self.entry(study_id)
        frontal = load_image_path(self.resolve(entry.frontal))
        study = Study(
            study_id=entry.study_id,
            frontal=frontal,
            lateral=self._optional_image(entry.lateral),
            prior_frontal=self._optional_image(entry.prior_frontal),
            context=entry.context(),
            reference_findings=entry.reference_findings,
            reference_boxes=tuple(_to_image_frame(b, frontal) for b in entry.reference_boxes),
            attribution=entry.attribution,
        )
        with self._lock:
            self._cache[study_id] = study
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return study

    def search(self, query: str) -> list[StudyEntry]:
        """Entries whose id, sections, reference text or box labels contain every word of `query` (any case)."""
        words = query.casefold().split()
        return [e for e in self.entries if all(w in e.search_text() for w in words)]

    def _optional_image(self, relative: str | None) -> XrayImage | None:
        return None if relative is None else load_image_path(self.resolve(relative))


def bundled_samples_path() -> Path:
    """The manifest of the sample studies shipped in assets/samples/."""
    return Path(__file__).resolve().parent.parent / "assets" / "samples" / "studies.jsonl"


def load_manifest(path: str | Path, cache_size: int = 8) -> Dataset:
    """Read a .jsonl or .csv manifest (or a folder holding studies.jsonl / studies.csv) into a `Dataset`."""
    path = Path(path)
    if path.is_dir():
        found = [path / n for n in MANIFEST_NAMES if (path / n).is_file()]
        if not found:
            raise DatasetError(f"Folder {path} has no {' or '.join(MANIFEST_NAMES)}.")
        path = found[0]
    suffix = path.suffix.lower()
    if suffix not in (".jsonl", ".csv"):
        raise DatasetError(f"Manifest {path.name} must be a .jsonl or .csv file.")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"Cannot read manifest {path}: {exc}") from exc
    root = path.parent.resolve()
    rows = _jsonl_rows(text) if suffix == ".jsonl" else _csv_rows(text)
    entries: list[StudyEntry] = []
    errors: list[RowError] = []
    seen: dict[str, int] = {}
    for line, row in rows:
        try:
            if isinstance(row, str):
                raise ValueError(row)
            entry = _parse_row(row, root)
            if entry.study_id in seen:
                raise ValueError(f"duplicate study_id {entry.study_id!r} (first on line {seen[entry.study_id]})")
        except ValueError as exc:
            errors.append(RowError(line, str(exc)))
            continue
        seen[entry.study_id] = line
        entries.append(entry)
    return Dataset(root, root.name, entries, errors, cache_size=cache_size, manifest_path=path.resolve())


# --- row readers: (line, dict) or (line, error message) ---------------------------------------


def _jsonl_rows(text: str) -> list[tuple[int, dict[str, Any] | str]]:
    rows: list[tuple[int, dict[str, Any] | str]] = []
    for line, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            value = json.loads(raw)
        except json.JSONDecodeError as exc:
            rows.append((line, f"not valid JSON ({exc.msg} at column {exc.colno})"))
            continue
        rows.append((line, value if isinstance(value, dict) else "a row must be a JSON object"))
    return rows


def _csv_rows(text: str) -> list[tuple[int, dict[str, Any] | str]]:
    reader = csv.DictReader(io.StringIO(text, newline=""))
    rows: list[tuple[int, dict[str, Any] | str]] = []
    start = 2
    try:
        for record in reader:
            if None in record:
                rows.append((start, "more cells than header columns"))
            elif any(v.strip() for v in record.values() if v is not None):
                rows.append((start, _csv_record(record)))
            start = reader.line_num + 1
    except csv.Error as exc:
        rows.append((start, f"malformed CSV ({exc})"))
    return rows


def _csv_record(record: dict[str, str | None]) -> dict[str, Any] | str:
    row: dict[str, Any] = {k.strip(): v for k, v in record.items() if k is not None and v is not None}
    try:
        boxes = (row.get("reference_boxes") or "").strip()
        row["reference_boxes"] = json.loads(boxes) if boxes else []
    except json.JSONDecodeError as exc:
        return f"reference_boxes is not a JSON list ({exc.msg})"
    return row


# --- row validation --------------------------------------------------------------------------


def _parse_row(row: dict[str, Any], root: Path) -> StudyEntry:
    study_id = _text(row, "study_id")
    if not study_id:
        raise ValueError("study_id is missing")
    if len(study_id) > MAX_STUDY_ID_CHARS:
        raise ValueError(f"study_id {_shorten(study_id)} is longer than {MAX_STUDY_ID_CHARS} characters")
    try:
        return _parse_study(row, root, study_id)
    except ValueError as exc:
        raise ValueError(f"study {study_id!r}: {exc}") from None


def _parse_study(row: dict[str, Any], root: Path, study_id: str) -> StudyEntry:
    paths = {f: _text(row, f) for f in IMAGE_FIELDS}
    if not paths["frontal"]:
        raise ValueError("frontal image path is missing")
    for field_name, relative in paths.items():
        if relative:
            try:
                _resolve_inside(root, relative)
            except DatasetError as exc:
                raise ValueError(f"{field_name}: {exc}") from None
    return StudyEntry(
        study_id=study_id,
        frontal=paths["frontal"],  # type: ignore[arg-type]
        lateral=paths["lateral"],
        prior_frontal=paths["prior_frontal"],
        **{s: _text(row, s) for s in SECTIONS},
        reference_findings=_findings(row.get("reference_findings")),
        reference_boxes=tuple(_box(b, i) for i, b in enumerate(_box_list(row.get("reference_boxes")), start=1)),
        attribution=_text(row, "attribution") or "",
    )


def _text(row: dict[str, Any], key: str) -> str | None:
    value = row.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f"{key} must be text, got {type(value).__name__}")
    if "\x00" in value:
        raise ValueError(f"{key} contains a NUL character at position {value.index(chr(0))}")
    return value.strip() or None


def _findings(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        stripped = value.strip()
        if stripped.startswith("["):
            try:
                value = json.loads(stripped)
            except json.JSONDecodeError as exc:
                raise ValueError(f"reference_findings is not a JSON list ({exc.msg})") from None
        else:
            value = stripped.split(" | ")
    if not isinstance(value, list) or not all(isinstance(s, str) for s in value):
        raise ValueError("reference_findings must be a list of sentences")
    return tuple(s.strip() for s in value if s.strip())


def _box_list(value: Any) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise ValueError("reference_boxes must be a list of box objects")
    return value


def _box(value: Any, index: int) -> ManifestBox:
    where = f"reference box {index}"
    if not isinstance(value, dict):
        raise ValueError(f"{where} must be an object with label, x_min, y_min, x_max, y_max")
    try:
        coords = [float(value[k]) for k in ("x_min", "y_min", "x_max", "y_max")]
    except KeyError as exc:
        raise ValueError(f"{where} lacks {exc.args[0]}") from None
    except (TypeError, ValueError):
        raise ValueError(f"{where} has a non-numeric coordinate") from None
    frame = str(value.get("frame", "pixel")).lower()
    if frame not in BOX_FRAMES:
        raise ValueError(f"{where}: frame must be 'pixel' or 'normalized', got {frame!r}")
    x0, y0, x1, y1 = coords
    if not all(math.isfinite(c) for c in coords) or x0 >= x1 or y0 >= y1 or min(coords) < 0:
        raise ValueError(f"{where} needs 0 <= x_min < x_max and 0 <= y_min < y_max, got {coords}")
    if frame == "normalized" and max(coords) > 1:
        raise ValueError(f"{where} is normalized but has a coordinate above 1: {coords}")
    return ManifestBox(str(value.get("label", "")).strip(), Box(x0, y0, x1, y1), frame, str(value.get("source", "")))


def _resolve_inside(root: Path, relative: str) -> Path:
    """root / relative, refusing absolute paths and anything (.. or a symlink) that leaves root."""
    shown = _shorten(relative)
    if "\x00" in relative:
        raise DatasetError(f"path {shown} contains a NUL character")
    if len(relative) > MAX_PATH_CHARS:
        raise DatasetError(f"path {shown} is {len(relative):,} characters long; the limit is {MAX_PATH_CHARS:,}")
    candidate = Path(relative)
    if candidate.is_absolute() or candidate.drive or relative.startswith(("/", "\\")):
        raise DatasetError(f"path {shown} must be relative to the manifest folder")
    try:
        resolved = (root / candidate).resolve()
        is_file = resolved.is_file()
    except RuntimeError:  # Python 3.11's resolve() on a symlink loop
        raise DatasetError(f"path {shown} is a symbolic link loop") from None
    except OSError as exc:  # name too long, loop (ELOOP), permission, ...
        raise DatasetError(f"path {shown} cannot be used: {exc.strerror or type(exc).__name__}") from None
    if not resolved.is_relative_to(root):
        raise DatasetError(f"path {shown} points outside the dataset folder")
    if not is_file:
        raise DatasetError(f"file {shown} not found")
    return resolved


def _shorten(text: str, limit: int = 80) -> str:
    """`repr` of `text`, cut to about `limit` characters, for messages."""
    return repr(text) if len(text) <= limit else repr(text[:limit]) + "…"


def _to_image_frame(entry_box: ManifestBox, frontal: XrayImage) -> ReferenceBox:
    box = entry_box.box
    if entry_box.frame == "normalized":
        w, h = frontal.width, frontal.height
        box = Box(box.x_min * w, box.y_min * h, box.x_max * w, box.y_max * h)
    return ReferenceBox(label=entry_box.label, image_box=box, source=entry_box.source or "reference")
