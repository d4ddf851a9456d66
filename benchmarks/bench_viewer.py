"""Viewer re-render latency and figure size on a full-size 15-bit DICOM.

Times (median of N) a box toggle (cached picture; build_figure + to_json) and a window/level
change (new window: render_base + build_figure + to_json), and reports the figure JSON size.
Run: python benchmarks/bench_viewer.py [path/to/image.dcm]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model_backend.images import load_image_path
from model_backend.types import BackendInfo, Box, Finding, PromptContext, Report
from webapp.viewer import (
    DisplayImageCache,
    build_figure,
    figure_json_size,
    layers_from_report,
    with_visibility,
)

DEFAULT_DICOM = Path("/work/shared/samples/dicom/RG1_J2KI.dcm")
TARGET_MS = 50.0
TARGET_KB = 400.0

FINDINGS = (
    Finding("There is a 2 cm nodule in the right upper lobe.", (Box(0.215, 0.155, 0.385, 0.305),)),
    Finding("Bilateral pleural effusions.", (Box(0.055, 0.705, 0.305, 0.925), Box(0.695, 0.705, 0.945, 0.925))),
    Finding("The cardiomediastinal silhouette is within normal limits."),
    Finding("Patchy opacities in both lower zones.", (Box(0.105, 0.505, 0.405, 0.755), Box(0.605, 0.5, 0.895, 0.755))),
    Finding("Right internal jugular central venous catheter tip in the SVC.", (Box(0.455, 0.105, 0.595, 0.455),)),
    Finding("No pneumothorax."),
)


def fake_report(width: int, height: int) -> Report:
    return Report(
        study_id="bench",
        context=PromptContext(name="A"),
        findings=FINDINGS,
        image_width=width,
        image_height=height,
        raw_text=" ".join(f.text for f in FINDINGS),
        complete=True,
        backend=BackendInfo(name="replay", model_id="bench"),
    )


def median_ms(fn: Callable[[int], object], repeats: int) -> float:
    fn(-1)  # warm-up
    times = []
    for i in range(repeats):
        start = time.perf_counter()
        fn(i)
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("image", nargs="?", type=Path, default=DEFAULT_DICOM)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()

    image = load_image_path(args.image)
    report = fake_report(image.width, image.height)
    layers = layers_from_report(report)
    cache = DisplayImageCache()
    base = cache.render_base(image, None, False)
    centre, width = image.default_window or (128.0, 256.0)
    sizes: list[int] = []

    def toggle(i: int) -> None:
        hidden = {layers[i % len(layers)].key}
        fig = build_figure(base, image.width, image.height, with_visibility(layers, hidden))
        sizes.append(figure_json_size(fig))

    def window_change(i: int) -> None:
        rendered = cache.render_base(image, (centre + 37.0 * (i + 2), width * 0.9), False)
        fig = build_figure(rendered, image.width, image.height, layers)
        sizes.append(figure_json_size(fig))

    toggle_ms = median_ms(toggle, args.repeats)
    window_ms = median_ms(window_change, args.repeats)
    size_kb = max(sizes) / 1024

    print(f"image: {args.image.name} {image.width}x{image.height} {image.pixels.dtype} ({image.bits_stored}-bit)")
    print(f"picture: {base.width}x{base.height}, {len(base.data_uri) / 1024:.0f} KB data URI")
    print(f"toggle re-render:        {toggle_ms:6.1f} ms (median of {args.repeats})  {verdict(toggle_ms <= TARGET_MS)}")
    print(f"window/level re-render:  {window_ms:6.1f} ms (median of {args.repeats})  {verdict(window_ms <= TARGET_MS)}")
    print(f"figure JSON (largest):   {size_kb:6.1f} KB                   {verdict(size_kb <= TARGET_KB)}")
    return 0 if max(toggle_ms, window_ms) <= TARGET_MS and size_kb <= TARGET_KB else 1


if __name__ == "__main__":
    sys.exit(main())
