"""The published ledger is honest: recalled figures stay apart from verified ones and out of every gap.

See docs/results.md, "Published figures".
"""
from __future__ import annotations

import re
from importlib import resources
from pathlib import Path

import pandas as pd
import pytest

from harness.bits import parse_bits
from reports.published import KEY, load_published

HEADER = "task,model,method,bits,metric,value,source,verified,notes\n"
ROWS = ("imagenet,m,psaq,w8a8,top1,70.5,https://example.org/readme,verified,\n"
        "imagenet,m,psaq,w4a4,top1,40.25,secondary notes,recalled,unchecked\n"
        "imagenet,m,fp,fp,top1,80.0,secondary notes,recalled,\n")
# A figure is verified only with a source a reader can open: a URL (a repository file pinned to a commit
# when it is on GitHub), followed or preceded by the table or sentence it was read in.
URL = re.compile(r"https?://\S+")
GITHUB_FILE = re.compile(r"https://github\.com/[\w.-]+/[\w.-]+/blob/[0-9a-f]{40}/\S+")


@pytest.fixture
def ledger(tmp_path: Path) -> Path:
    path = tmp_path / "published.csv"
    path.write_text(HEADER + ROWS)
    return path


def shipped() -> pd.DataFrame:
    with resources.files("reports").joinpath("published.csv").open() as handle:
        return pd.read_csv(handle, dtype=str, keep_default_na=False)


def test_recalled_figure_is_not_looked_up_by_default(ledger: Path):
    table = load_published(ledger)
    assert table.lookup("imagenet", "m", "psaq", "w8a8", "top1").value == 70.5
    assert table.lookup("imagenet", "m", "psaq", "w4a4", "top1") is None  # recalled: no gap against it
    assert table.fp("imagenet", "m", "top1") is None


def test_recalled_figures_are_reachable_apart(ledger: Path):
    table = load_published(ledger)
    figure = table.recalled("imagenet", "m", "psaq", "w4a4", "top1")
    assert figure.value == 40.25 and not figure.verified_figure and figure.notes == "unchecked"
    assert table.recalled("imagenet", "m", "fp", "fp", "top1").value == 80.0
    assert table.recalled("imagenet", "m", "psaq", "w8a8", "top1") is None  # verified: not a recalled figure
    assert table.recalled("imagenet", "m", "psaq", "w6a6", "top1") is None  # no figure at all


def test_include_recalled_returns_them(ledger: Path):
    table = load_published(ledger, include_recalled=True)
    figure = table.lookup("imagenet", "m", "psaq", "w4a4", "top1")
    assert figure.value == 40.25 and figure.verified == "recalled" and not figure.verified_figure
    assert table.fp("imagenet", "m", "top1").value == 80.0
    assert table.lookup("imagenet", "m", "psaq", "w8a8", "top1").verified_figure


def test_metrics_name_every_published_metric(ledger: Path):
    assert load_published(ledger).metrics("imagenet") == {"top1"}


def test_shipped_recalled_figure_stays_out_of_lookup():
    key = ("imagenet", "vit_base_patch16_224", "spdfq", "w4a4", "top1")  # a table of the paper, not read
    assert load_published().lookup(*key) is None
    assert load_published().recalled(*key).value == 51.84
    assert load_published(include_recalled=True).lookup(*key).value == 51.84


def test_shipped_lookup_returns_verified_figures_only():
    table = load_published()
    for row in shipped().itertuples():
        figure = table.lookup(row.task, row.model, row.method, str(parse_bits(row.bits)), row.metric)
        assert (figure is not None) == (row.verified == "verified"), row


def test_every_shipped_verified_figure_cites_a_source_a_reader_can_open():
    verified = shipped()[lambda t: t["verified"] == "verified"]
    assert len(verified) > 0
    for row in verified.itertuples():
        urls = URL.findall(row.source)
        assert urls, f"{row.model} {row.method} {row.bits}: source {row.source!r} names no URL"
        for url in urls:
            if url.startswith("https://github.com/"):
                assert GITHUB_FILE.fullmatch(url), f"{url}: a repository file must be pinned to a commit"
        assert URL.sub("", row.source).strip(" ,:;"), f"{row.source!r}: say which table or sentence holds it"


def test_shipped_recalled_figures_cite_no_verified_source():
    recalled = shipped()[lambda t: t["verified"] == "recalled"]
    assert all("secondary notes" in source for source in recalled["source"])


def test_shipped_keys_are_unique():
    table = shipped()
    keys = table[list(KEY)].apply(lambda column: column.str.strip().str.lower())
    keys["bits"] = [str(parse_bits(bits)) for bits in keys["bits"]]
    assert not keys.duplicated().any(), keys[keys.duplicated(keep=False)]
