"""The HTML page: escaped, self-contained, with the gallery, and clean in a real browser."""
from __future__ import annotations

import dataclasses
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from harness.plugin.method import CalibrationSet
from harness.plugin.task import ImagePrior
from harness.store.calibration_cache import write_calibration
from harness.store.records import ResultStore
from reports.gallery import cached_galleries
from reports.render import write_report

EVIL = "<script>alert('owned')</script>"
BROWSERS = ("chromium", "chromium-browser", "google-chrome")


def write_cache_entry(results: Path, generator: str, model: str, seed: int) -> Path:
    """A generator cache entry as ``harness.run.runner`` writes it."""
    prior = ImagePrior(input_size=(3, 8, 8), mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), num_classes=10)
    images = torch.linspace(-2, 2, 10 * 3 * 8 * 8).reshape(10, 3, 8, 8)
    path = ResultStore(results).calibration_path(generator, f"{model}-{seed}")
    write_calibration(path, CalibrationSet(images=images), {
        "generator": generator, "model": model, "seed": seed, "options": {}, "prior": dataclasses.asdict(prior),
        "code": {name: {"version": "1", "digest": "0" * 16} for name in ("generator", "task")}, "generate_seconds": 1.0})
    return path


@pytest.fixture(scope="module")
def evil_results(tmp_path_factory, grid_records, make_record, write_records) -> Path:
    """The grid plus a plugin whose method, label, task and model names carry markup; rendered once."""
    evil = make_record(label=EVIL, method=EVIL, generator=EVIL, task=f"task{EVIL}", model=f"model{EVIL}", top1=12.5)
    results = write_records(tmp_path_factory.mktemp("results"), [*grid_records, evil])
    write_cache_entry(results, "psaq", "deit_tiny_patch16_224", seed=1)
    write_cache_entry(results, "psaq", "deit_tiny_patch16_224", seed=0)
    (results / "cache" / "generators" / "psaq" / "torn.safetensors").write_bytes(b"not a safetensors file")
    write_report(results, results / "report")
    return results


@pytest.fixture(scope="module")
def html(evil_results: Path) -> str:
    return (evil_results / "report" / "report.html").read_text()


def test_plugin_names_are_text_not_markup(html, evil_results):
    assert "<script" not in html.lower()
    assert "&lt;script&gt;alert(&#39;owned&#39;)&lt;/script&gt;" in html
    for page in (evil_results / "report").glob("*.md"):
        assert "<script" not in page.read_text().lower(), page.name
    assert "&lt;script&gt;" in (evil_results / "report" / "task-script-alert-owned-script.md").read_text()


def test_page_is_self_contained(html):
    assert "<link" not in html and "@import" not in html
    references = re.findall(r'(?:src|href)="([^"]*)"', html) + re.findall(r"url\(([^)]*)\)", html)
    assert references and all(ref.startswith(("#", "data:image/png;base64,")) for ref in references)


def test_missing_published_figure_is_empty_and_present_one_cites_its_source(html):
    leaderboard = html.split('<table class="leaderboard">', 1)[1].split("</table>", 1)[0]
    rows = dict(re.findall(r'<tr><th scope="row">([^<]+)</th>(.*?)</tr>', leaderboard))
    noise_w8a8, _, noise_w4a4, noise_data, noise_protocol = re.findall(r"<td[^>]*>.*?</td>", rows["noise"])
    assert noise_protocol == '<td class="data">calibration only</td>'  # no tuner in these records
    assert noise_data == '<td class="data">not recorded</td>'  # these handmade records do not say
    psaq_w8a8 = re.findall(r"<td[^>]*>.*?</td>", rows["psaq"])[0]
    assert "pub." not in noise_w8a8 and "published" not in noise_w8a8
    # The paper's noise w4a4 figure (17.43) is recalled, not verified: no figure and no gap beside the cell.
    assert "pub." not in noise_w4a4 and "17.43" not in noise_w4a4
    assert re.search(r'pub\. 71\.56 <a href="#source-(\d+)">\[\1\]</a> gap \+0\.44', psaq_w8a8)
    number = re.search(r"#source-(\d+)", psaq_w8a8).group(1)
    assert re.search(rf'<li id="source-{number}" value="{number}">PSAQ-ViT README, Results table: https://', html)


def test_gallery_shows_the_lowest_cached_seed(evil_results, html):
    galleries = cached_galleries(evil_results, {"deit_tiny_patch16_224"})
    assert list(galleries) == ["psaq"]  # the torn entry is skipped
    (row,) = galleries["psaq"]
    assert row.seed == 0 and row.images.shape == (8, 8, 8, 3)
    assert 0.0 <= row.images.min() and row.images.max() <= 1.0  # de-normalized and clipped to pixels
    assert "Calibration images" in html and "psaq: the first 8 calibration images" in html
    assert (evil_results / "report" / "figures" / "imagenet--gallery--psaq.svg").exists()


def test_page_renders_in_headless_chromium(evil_results, html, tmp_path):
    browser = next((shutil.which(name) for name in BROWSERS if shutil.which(name)), None)
    if browser is None:
        pytest.skip("no chromium on PATH (Debian: apt-get install -y chromium)")
    screenshot = tmp_path / "report.png"
    result = subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars",
         f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr", "--v=0", "--window-size=1280,2000",
         "--dump-dom", f"--screenshot={screenshot}", (evil_results / "report" / "report.html").as_uri()],
        capture_output=True, text=True, timeout=120)
    console = [line for line in result.stderr.splitlines() if ":CONSOLE" in line or "Uncaught" in line]
    assert result.returncode == 0, result.stderr[-2000:]
    assert console == []
    assert screenshot.stat().st_size > 10_000  # a rendered page, not a blank one
    assert "deit_tiny_patch16_224" in result.stdout and "Run metadata" in result.stdout
    assert "<script" not in result.stdout.lower()  # the escaped name stayed text in the live DOM
