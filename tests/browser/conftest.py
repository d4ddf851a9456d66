"""Browser-test fixtures: the real app (`python app.py`) on a free loopback port, headless Debian chromium.

One server (and one review database) serves the whole browser session; every test gets its own
browser context, hence its own Gradio session. `CXR_BROWSER_MODEL` picks another `--model` spec
(default `demo`, the bundled model whose findings carry boxes).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qsl, urlparse

import pytest

from tests.app_process import AppStartError, running_app

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
# Two recorded results (batch-runner format) for the dashboard tab; neither is the first study of the samples.
DASHBOARD_RESULTS = [
    {
        "study_id": study_id,
        "context": {"name": "default"},
        "image_width": 1024,
        "image_height": 1024,
        "output": [["There is a nodule in the left middle zone.", [[0.605, 0.665, 0.695, 0.755]]]],
    }
    for study_id in ("nih_00016487_002", "nih_00029808_003")
]
GENERATE_TIMEOUT_MS = 180_000  # a full grounded report on two shared CPU cores
UI_TIMEOUT_MS = 30_000

if not CHROMIUM.exists():
    pytest.skip(
        f"{CHROMIUM} is missing: install Debian's chromium (tests/run.sh does) to run the browser tests",
        allow_module_level=True,
    )

from playwright.sync_api import Browser, Locator, Page, expect, sync_playwright  # noqa: E402


@pytest.fixture(scope="session")
def app_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Start `python app.py --model demo` on a free port with a fresh review database; yield its URL."""
    model = os.environ.get("CXR_BROWSER_MODEL", "demo")
    if model == "demo" and not DEMO_CONFIG.exists():
        pytest.skip(
            f"the demo model is missing ({DEMO_CONFIG}); build it with `python -m model_backend.demo_model.train`"
        )
    workdir = tmp_path_factory.mktemp("browser_app")
    results = workdir / "results.jsonl"
    results.write_text("\n".join(json.dumps(line) for line in DASHBOARD_RESULTS) + "\n")
    try:
        with running_app(["--model", model, "--results", str(results)], workdir) as app:
            yield app.url
    except AppStartError as err:
        pytest.fail(str(err))


@pytest.fixture(scope="session")
def browser() -> Iterator[Browser]:
    """Headless Debian chromium (no sandbox, no GPU, no background traffic)."""
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def review(browser: Browser, app_url: str) -> Iterator[ReviewPage]:
    """A fresh browser context (own Gradio session, own localStorage) on the app."""
    context = browser.new_context(viewport={"width": 1600, "height": 1000}, accept_downloads=True)
    context.set_default_timeout(UI_TIMEOUT_MS)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda err: errors.append(str(err)))
    yield ReviewPage(page, app_url)
    context.close()
    assert not errors, f"uncaught page errors: {errors}"


@pytest.fixture(scope="session")
def artifacts() -> Path:
    """Folder for screenshots (git-ignored)."""
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS


class ReviewPage:
    """What a user does on the review page, in Playwright terms (element ids from webapp/ui.py)."""

    PLOT = "#viewer .js-plotly-plot"

    def __init__(self, page: Page, base_url: str) -> None:
        self.page = page
        self.base_url = base_url

    # ------------------------------------------------------------ navigation
    def open(self, query: str = "") -> None:
        """Load the app (optionally `?study=…` etc.) and wait until a study is drawn."""
        self.page.goto(self.base_url + (f"?{query}" if query else ""))
        self.page.wait_for_selector(f"{self.PLOT} .imagelayer image", state="attached", timeout=60_000)
        expect(self.page.locator(".study-head")).to_be_attached()

    def wait_for_study(self, study_id: str) -> None:
        """Until the header names `study_id` and the figure has been redrawn."""
        expect(self.page.locator(".study-head b").first).to_have_text(study_id)
        self.page.wait_for_selector(f"{self.PLOT} .imagelayer image")

    def study_id(self) -> str:
        return self.page.locator(".study-head b").first.inner_text()

    def query(self) -> dict[str, str]:
        """The address bar's query parameters."""
        return dict(parse_qsl(urlparse(self.page.url).query))

    def open_tab(self, name: str) -> None:
        self.page.get_by_role("tab", name=name).click()

    def open_accordion(self, label: str) -> None:
        """Open a closed Gradio accordion by its label."""
        button = self.page.locator("button.label-wrap", has_text=label)
        if "open" not in (button.get_attribute("class") or "").split():
            button.click()

    # ------------------------------------------------------------ generation
    def generate(self) -> int:
        """Press Generate and wait for the finished report; return the number of findings."""
        self.page.click("#generate")
        return self.wait_for_report()

    def wait_for_report(self) -> int:
        """Until #findings shows a finished report (numbered list or "No findings"); its finding count."""
        findings = self.page.locator("#findings")
        self.page.wait_for_function(
            """() => {
                const f = document.querySelector('#findings');
                if (!f || f.innerText.includes('generating') || f.innerText.includes('No report yet')) return false;
                return !!f.querySelector('ol.findings li, .error-box') || f.innerText.includes('No findings');
            }""",
            timeout=GENERATE_TIMEOUT_MS,
        )
        expect(findings.locator(".error-box")).to_have_count(0)
        return findings.locator("ol.findings li").count()

    def grounded_keys(self) -> list[str]:
        """Legend groups (toggle keys such as `A:0`) of the figure's finding boxes, in order."""
        return self.page.evaluate(
            """(sel) => {
                const gd = document.querySelector(sel);
                const keys = gd.data.filter((t) => t.type === 'scatter' && t.line && t.line.color !== '#FFFFFF')
                    .map((t) => t.legendgroup);
                return [...new Set(keys)];
            }""",
            self.PLOT,
        )

    def visible_traces(self, key: str) -> int:
        """How many of finding `key`'s box traces the plot draws (plotly renders `legendonly` ones as none)."""
        return self.page.evaluate(
            """([sel, key]) => {
                const gd = document.querySelector(sel);
                return gd._fullData.filter((t) => t.legendgroup === key && t.visible === true).length;
            }""",
            [self.PLOT, key],
        )

    def drawn_traces(self) -> int:
        """Scatter traces in the plot's SVG (reference and finding boxes that are shown)."""
        return self.page.locator(f"{self.PLOT} .scatterlayer .trace").count()

    def axis_range(self, axis: str = "xaxis") -> list[float]:
        return self.page.evaluate(
            "([sel, axis]) => document.querySelector(sel)._fullLayout[axis].range.slice()", [self.PLOT, axis]
        )

    # ------------------------------------------------------------ widgets
    def textbox(self, elem_id: str) -> Locator:
        """The editable field of a Gradio Textbox."""
        return self.page.locator(f"#{elem_id}").locator("textarea, input").first

    def pick(self, elem_id: str, option_text: str) -> None:
        """Choose the Gradio dropdown option that starts with `option_text`."""
        self.page.click(f"#{elem_id} input")
        self.page.locator(f'[role=option][aria-label^="{option_text}"]').first.click()

    def radio(self, elem_id: str, value: str) -> None:
        """Select the radio button with `value`."""
        self.page.locator(f"#{elem_id} input[value='{value}']").check()
