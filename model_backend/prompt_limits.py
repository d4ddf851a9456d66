"""Limits on prompt text, checked before anything is tokenised or computed.

Two limits protect the model (and everyone waiting for it) from a prompt that cannot work:

* `MAX_SECTION_CHARS` characters per text section (indication, technique, comparison, prior
  report, a phrase to ground), checked on the raw text; the scoring protocol, the UI and every
  backend apply it. Real sections are a few hundred characters; a whole prior report rarely
  passes 3,000.
* the model's positions: a local backend counts the prompt's tokens and refuses a prompt that
  leaves fewer than `MIN_REPORT_TOKENS` positions for the report (`LocalBackend`), naming the
  longest section.

Text must also be valid Unicode (no lone surrogates, which tokenizers reject) without NUL.
"""

from __future__ import annotations

from model_backend.backends.base import PromptError
from model_backend.types import PromptContext

MAX_SECTION_CHARS = 10_000
MIN_REPORT_TOKENS = 32
SECTIONS = ("indication", "technique", "comparison", "prior_report")


def text_problem(value: str) -> str | None:
    """Why `value` cannot go into a prompt (too long, lone surrogate, NUL), or None when it can."""
    if len(value) > MAX_SECTION_CHARS:
        return f"is {len(value):,} characters long; the limit is {MAX_SECTION_CHARS:,} characters"
    if "\x00" in value:
        return f"contains a NUL character at position {value.index(chr(0))}"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        return f"is not valid text (a lone surrogate at position {exc.start})"
    return None


def check_text(field: str, value: str | None, context_name: str | None = None) -> None:
    """Raise `PromptError` naming `field` when its text cannot go into a prompt."""
    problem = None if value is None else text_problem(value)
    if problem is not None:
        label = field.replace("_", " ")
        raise PromptError(f"the {label} {problem}", field=field, context_name=context_name)


def check_context(context: PromptContext) -> None:
    """Every text section of `context` through `check_text`."""
    for field in SECTIONS:
        check_text(field, getattr(context, field), context.name)
