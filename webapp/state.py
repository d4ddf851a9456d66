"""Per-tab state of the Review tab, in one typed object (a `gr.State` holds one per browser tab)."""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import parse_qs

from model_backend.backends.base import BOX_COMPLETION, REPORTING
from webapp.services import StudyRef, Switches


@dataclass
class TabState:
    """What one browser tab has open: the study, the stored report on screen, the current list."""

    ref: StudyRef | None = None
    report_id: str | None = None  # the stored report on screen (verdicts point at it); None while unsaved
    listing: list[str] = field(default_factory=list)  # the current list: search + filters; drives ←/→
    query: str = ""
    unreviewed_only: bool = False
    switches: Switches = field(default_factory=Switches)
    task: str = REPORTING  # what Generate does and which stored report is shown: reporting or box_completion

    @property
    def dataset_study(self) -> str | None:
        """The open study's id when it is a dataset study (not an upload)."""
        return self.ref.key if self.ref is not None and self.ref.kind == "dataset" else None


@dataclass(frozen=True)
class Address:
    """What an address (`?study=…&lateral=1…`) asks to open; `push` is False for back/forward and first loads."""

    study: str | None = None
    upload: str | None = None
    report: str | None = None
    switches: Switches = field(default_factory=Switches)
    view: str = "review"
    task: str = REPORTING
    push: bool = True


VIEWS = ("review", "compare", "upload", "dashboard")


def parse_address(query: str | dict[str, str], push: bool = True) -> Address:
    """An address query string (or its parameters) -> `Address`; unknown or malformed parts are ignored."""
    if isinstance(query, str):
        params = {k: v[-1] for k, v in parse_qs(query.lstrip("?"), keep_blank_values=False).items()}
    else:
        params = dict(query)

    def flag(name: str) -> bool:
        return params.get(name, "1") != "0"

    view = params.get("view", "review")
    return Address(
        study=params.get("study") or None,
        upload=params.get("upload") or None,
        report=params.get("report") or None,
        switches=Switches(flag("lateral"), flag("prior"), flag("grounded")),
        view=view if view in VIEWS else "review",
        task=BOX_COMPLETION if params.get("task") == BOX_COMPLETION else REPORTING,
        push=push,
    )


def nav_value(query: str, push: bool, nonce: str) -> str:
    """What a panel writes into the hidden navigation field to open `query` in the Review tab."""
    return f"{'push' if push else 'pop'}|{query}|{nonce}"


def parse_nav_value(value: str) -> Address | None:
    """Inverse of `nav_value` (the browser's back/forward handler writes `?query#nonce`)."""
    if not value:
        return None
    if value.startswith(("push|", "pop|")):
        mode, query, _ = [*value.split("|", 2), "", ""][:3]
        return parse_address(query, push=mode == "push")
    return parse_address(value.split("#", 1)[0], push=False)
