"""A short, stable identity of a model's weights, for reports and the page header.

`weights_digest` hashes (SHA-256) the weight files of a snapshot folder: their names, sizes and full
content while the files total at most `FULL_HASH_BYTES`; above that (a 7B checkpoint is ~14 GB,
minutes to read on a cold disk) their names, sizes and `SAMPLES` evenly spaced chunks of
`CHUNK_BYTES` per file. Either way two different trainings give different digests and the same
files always give the same one; the sampled form is a fingerprint, not proof against tampering.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

FULL_HASH_BYTES = 2 * 1024**3
SAMPLES = 64
CHUNK_BYTES = 1024 * 1024
WEIGHT_PATTERNS = ("*.safetensors", "*.bin", "*.pt")
DIGEST_CHARS = 16


def weight_files(folder: Path) -> list[Path]:
    """The weight files of a snapshot folder, sorted by name."""
    for pattern in WEIGHT_PATTERNS:
        found = sorted(p for p in folder.glob(pattern) if p.is_file())
        if found:
            return found
    return []


def weights_digest(folder: str | Path) -> str:
    """`DIGEST_CHARS` hex characters identifying the weights in `folder` ("" when it has none)."""
    files = weight_files(Path(folder))
    if not files:
        return ""
    sizes = [f.stat().st_size for f in files]
    sample = sum(sizes) > FULL_HASH_BYTES
    digest = hashlib.sha256(b"sampled" if sample else b"full")
    for path, size in zip(files, sizes, strict=True):
        digest.update(f"{path.name}\0{size}\0".encode())
        with path.open("rb") as handle:
            if not sample:
                while chunk := handle.read(CHUNK_BYTES):
                    digest.update(chunk)
                continue
            for n in range(SAMPLES):
                handle.seek(max(0, (size - CHUNK_BYTES) * n // max(1, SAMPLES - 1)))
                digest.update(handle.read(CHUNK_BYTES))
    return digest.hexdigest()[:DIGEST_CHARS]
