"""Where evaluation weights are found: a path given on the command line, else local caches. Never downloads.

The report-generation scorers publish their checkpoints in the Hugging Face repository
`StanfordAIMI/RRG_scorers` (`chexbert.pth`, `radgraph.tar.gz`, `radgraph-xl.tar.gz`); the
`f1chexbert` and `radgraph` packages keep copies under ~/.cache/chexbert and ~/.cache/radgraph.
Lookups in the Hugging Face cache are offline (`try_to_load_from_cache`), so `HF_HUB_OFFLINE=1`
changes nothing here.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

RRG_SCORERS = "StanfordAIMI/RRG_scorers"


class WeightsMissing(LookupError):
    """Weights that are not on this machine; the message says which flag or folder to provide."""


def cached_hub_file(repo_id: str, filename: str) -> Path | None:
    """A file of a hub repository if the Hugging Face cache holds it (no network)."""
    from huggingface_hub import try_to_load_from_cache

    path = try_to_load_from_cache(repo_id, filename)
    return Path(path) if isinstance(path, str) else None


def find_weights(
    given: Path | None, filename: str, flag: str, fallbacks: Sequence[Path] = (), repo_id: str = RRG_SCORERS
) -> Path:
    """`given` (a file, or a folder holding `filename`), else the HF cache, else the first existing fallback."""
    if given is not None:
        path = given / filename if given.is_dir() else given
        if not path.exists():
            raise WeightsMissing(f"{flag} {given}: no {filename} there")
        return path
    cached = cached_hub_file(repo_id, filename)
    for path in (cached, *fallbacks):
        if path is not None and path.exists():
            return path
    raise WeightsMissing(
        f"no {filename}: pass {flag} PATH, or put it in the Hugging Face cache "
        f"(huggingface-cli download {repo_id} {filename})"
    )
