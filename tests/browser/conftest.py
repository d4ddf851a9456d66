"""Browser-test fixtures: the real app (`python app.py`) on a free loopback port, headless Debian chromium.

One server (and one review database) serves the whole browser session, with pre-generation off so
that every model call in its log was asked for by a test; every test gets its own browser context,
hence its own Gradio session. `CXR_BROWSER_MODEL` picks another `--model` spec (default `demo`, the
bundled model whose findings carry boxes). `ReviewPage` says what a person does, in Playwright terms.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from dataclasses import asdict, replace
from pathlib import Path
from urllib.parse import parse_qsl, urlparse

import pytest

from model_backend.datasets import bundled_samples_path, load_manifest
from tests.app_process import AppStartError, RunningApp, running_app

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
SAMPLES = ROOT / "assets" / "samples"
DEMO_CONFIG = ROOT / "assets" / "demo_model" / "config.json"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
]
DASHBOARD_STUDIES = ("nih_00016487_002", "nih_00029808_003")  # neither is the first study of the samples
DASHBOARD_FINDING = "There is a nodule in the left middle zone."
DASHBOARD_UNGROUNDED = "dashboard_ungrounded"
DASHBOARD_LOOP = "The heart size is normal."
GENERATE_TIMEOUT_MS = 180_000  # a full grounded report on two shared CPU cores
UI_TIMEOUT_MS = 30_000
MODEL_CALL = re.compile(r"model call \d+: (\w+) for study (\S+)")

if not CHROMIUM.exists():
    pytest.skip(
        f"{CHROMIUM} is missing: install Debian's chromium (tests/run.sh does) to run the browser tests",
        allow_module_level=True,
    )

from playwright.sync_api import Browser, Locator, Page, expect, sync_playwright  # noqa: E402


def dashboard_results() -> list[dict]:
    """Recorded results in the batch runner's format (full context, as `--contexts` would resolve it): per study
    a grounded "default" context, and an ungrounded context (settings no other test uses) whose report says
    `DASHBOARD_LOOP` three times, so that it is flagged "repetition"."""
    samples = load_manifest(bundled_samples_path())
    lines = []
    for study_id in DASHBOARD_STUDIES:
        entry = samples.entry(study_id)
        default = entry.effective_context(replace(entry.context(), name="default"))
        ungrounded = replace(default, name=DASHBOARD_UNGROUNDED, indication="Dashboard test.", grounded=False)
        outputs = [
            (default, [[DASHBOARD_FINDING, [[0.605, 0.665, 0.695, 0.755]]]]),
            (ungrounded, [[DASHBOARD_LOOP, None]] * 3),
        ]
        lines += [{
            "study_id": study_id, "context": asdict(context), "context_key": context.key(), "task": "reporting",
            "output": output, "raw_text": "", "complete": True,
            "warnings": [], "image_width": 1024, "image_height": 1024, "model_id": "recorded-model",
            "backend": "batch", "error": None, "timings": {},
        } for context, output in outputs]  # fmt: skip
    return lines


def start_app(workdir: Path, *extra: str) -> Iterator[RunningApp]:
    model = os.environ.get("CXR_BROWSER_MODEL", "demo")
    if model == "demo" and not DEMO_CONFIG.exists():
        pytest.skip(
            f"the demo model is missing ({DEMO_CONFIG}); build it with `python -m model_backend.demo_model.train`"
        )
    results = workdir / "results.jsonl"
    results.write_text("\n".join(json.dumps(line) for line in dashboard_results()) + "\n")
    try:
        with running_app(["--model", model, "--results", str(results), *extra], workdir) as app:
            yield app
    except AppStartError as err:
        pytest.fail(str(err))


@pytest.fixture(scope="session")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningApp]:
    """`python app.py --model demo --pregenerate 0` on a free port with a fresh review database."""
    yield from start_app(tmp_path_factory.mktemp("browser_app"), "--pregenerate", "0")


@pytest.fixture(scope="session")
def app_url(app: RunningApp) -> str:
    return app.url


def model_calls(app: RunningApp, kind: str | None = None) -> list[tuple[str, str]]:
    """(kind, study id) of every model call the app has logged so far (only `kind` when given)."""
    calls = MODEL_CALL.findall(app.log_text())
    return [c for c in calls if kind is None or c[0] == kind]


@pytest.fixture(scope="session")
def browser() -> Iterator[Browser]:
    """Headless Debian chromium (no sandbox, no GPU, no background traffic)."""
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


def new_review_page(browser: Browser, base_url: str, width: int = 1600, height: int = 1000) -> tuple[ReviewPage, list]:
    context = browser.new_context(viewport={"width": width, "height": height}, accept_downloads=True)
    context.set_default_timeout(UI_TIMEOUT_MS)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda err: errors.append(str(err)))
    return ReviewPage(page, base_url), errors


@pytest.fixture
def review(browser: Browser, app_url: str) -> Iterator[ReviewPage]:
    """A fresh browser context (own Gradio session, own localStorage) on the app, 1600x1000."""
    page, errors = new_review_page(browser, app_url)
    yield page
    page.page.context.close()
    assert not errors, f"uncaught page errors: {errors}"


@pytest.fixture(scope="session")
def artifacts() -> Path:
    """Folder for screenshots (git-ignored)."""
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS


class ReviewPage:
    """What a person does on the page, in Playwright terms (element ids from webapp/panels/*.py and the
    classes workstation.js gives the viewer)."""

    WS = "#workstation"

    def __init__(self, page: Page, base_url: str) -> None:
        self.page = page
        self.base_url = base_url

    # ------------------------------------------------------------ reading the page
    def assert_no_error(self) -> None:
        """No "Error" anywhere on the page (Gradio's error toasts and error states say it)."""
        text = self.page.locator("body").inner_text()
        assert "Error" not in text, text[text.find("Error") - 200 : text.find("Error") + 200]

    def query(self) -> dict[str, str]:
        """The address bar's query parameters."""
        return dict(parse_qsl(urlparse(self.page.url).query))

    def study_id(self) -> str:
        return self.page.locator(f"{self.WS} .ws-caption").inner_text().split(" · ")[0]

    def message(self) -> str:
        return self.page.locator(f"{self.WS} .ws-message").inner_text()

    def rows(self) -> Locator:
        return self.page.locator(f"{self.WS} .ws-row")

    def sentences(self) -> list[str]:
        return [t.strip() for t in self.page.locator(f"{self.WS} .ws-row .ws-sentence").all_inner_texts()]

    def view_box(self) -> str:
        return self.page.locator(f"{self.WS} svg.ws-svg").get_attribute("viewBox") or ""

    def shown_boxes(self, index: int | None = None) -> int:
        """Finding boxes drawn (not display:none), of finding `index` or of all findings."""
        selector = f"{self.WS} g.ws-findings rect" + ("" if index is None else f"[data-index='{index}']")
        return self.page.evaluate(
            "(sel) => [...document.querySelectorAll(sel)].filter((r) => r.style.display !== 'none').length", selector
        )

    def grounded_rows(self) -> list[int]:
        """Indexes of findings that have boxes."""
        return self.page.evaluate(
            "(sel) => [...new Set([...document.querySelectorAll(sel)].map((r) => Number(r.dataset.index)))]",
            f"{self.WS} g.ws-findings rect",
        )

    def report_status(self) -> str:
        return self.page.locator(f"{self.WS} .ws-status").inner_text()

    # ------------------------------------------------------------ doing things
    def open(self, query: str = "") -> None:
        """Load the app (optionally `?study=…` etc.) and wait until a study's picture is drawn."""
        self.page.goto(self.base_url + (f"?{query}" if query else ""))
        self.wait_for_picture()

    def wait_for_picture(self) -> None:
        self.page.wait_for_selector(f"{self.WS} svg.ws-svg image[href^='data:']", state="attached", timeout=60_000)

    def wait_for_study(self, study_id: str) -> None:
        """Until the viewer's caption names `study_id`."""
        expect(self.page.locator(f"{self.WS} .ws-caption")).to_contain_text(study_id + " ·", timeout=60_000)

    def open_tab(self, name: str) -> None:
        self.page.get_by_role("tab", name=name).click()

    def open_accordion(self, label: str) -> None:
        """Open a closed Gradio accordion by its label."""
        button = self.page.locator("button.label-wrap", has_text=label)
        if "open" not in (button.get_attribute("class") or "").split():
            button.click()

    def textbox(self, elem_id: str) -> Locator:
        """The editable field of a Gradio Textbox."""
        return self.page.locator(f"#{elem_id}").locator("textarea, input").first

    def set_reviewer(self, name: str) -> None:
        self.textbox("reviewer").fill(name)
        self.textbox("reviewer").blur()
        expect(self.page.locator("#progress")).to_contain_text(name)

    def generate(self) -> int:
        """Press Generate (or Regenerate) and wait for the stored report; return its number of findings."""
        self.page.click(f"{self.WS} .ws-generate")
        return self.wait_for_report()

    def wait_for_report(self) -> int:
        """Until a stored report is on screen (not streaming); its number of findings."""
        self.page.wait_for_function(
            """(sel) => {
                const s = document.querySelector(sel + ' .ws-status');
                const g = document.querySelector(sel + ' .ws-generate');
                return s && s.innerText.includes('stored report') && g && !g.disabled;
            }""",
            arg=self.WS,
            timeout=GENERATE_TIMEOUT_MS,
        )
        return self.rows().count()

    def focus_page(self) -> None:
        """Move the keyboard focus off any text field (shortcuts are off while typing)."""
        self.page.evaluate("() => document.activeElement && document.activeElement.blur()")
