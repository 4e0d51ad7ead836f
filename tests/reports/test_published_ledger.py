"""The published ledger is honest: recalled figures stay apart from verified ones and out of every gap, and
every figure says its protocol (calibration only, or fine-tuned), which is part of its key.

See docs/results.md, "Published figures".
"""
from __future__ import annotations

import re
from importlib import resources
from pathlib import Path

import pandas as pd
import pytest

from harness.quant.bits import parse_bits
from harness.run.grid import component_code
from reports.content import build_report
from reports.published import CALIBRATION_ONLY, FINE_TUNED, KEY, PROTOCOL_FORMS, load_published
from reports.render import write_report

HEADER = "task,model,method,bits,metric,protocol,value,source,verified,notes\n"
ROWS = ("imagenet,m,psaq,w8a8,top1,calibration only,70.5,https://example.org/readme,verified,\n"
        "imagenet,m,psaq,w4a4,top1,calibration only,40.25,secondary notes,recalled,unchecked\n"
        "imagenet,m,fp,fp,top1,calibration only,80.0,secondary notes,recalled,\n")
# One method, model, bits and metric under three protocols: three figures, each found under its own.
PROTOCOLS = ("imagenet,m,psaq,w4a8,top1,calibration only,73.23,https://example.org/readme,verified,\n"
             "imagenet,m,psaq,w4a8,top1,fine-tuned,76.56,https://example.org/table,verified,another group's table\n"
             "imagenet,m,psaq,w4a8,top1,fine-tuned (200 epochs),77.0,secondary notes,recalled,\n")
MASKAQ = "https://github.com/hfutqian/MaskAQ/blob/32454002b8ea88e9ac5f6f5e3e83262026423ec8/images/results.png"
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
        figure = table.lookup(row.task, row.model, row.method, str(parse_bits(row.bits)), row.metric,
                              protocol=row.protocol)
        assert (figure is not None) == (row.verified == "verified"), row
        assert figure is None or figure.protocol == row.protocol


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


def test_protocol_is_part_of_the_key(tmp_path: Path):
    path = tmp_path / "published.csv"
    path.write_text(HEADER + PROTOCOLS)
    table, key = load_published(path), ("imagenet", "m", "psaq", "w4a8", "top1")
    assert table.lookup(*key).value == 73.23  # calibration only by default: callers without a protocol
    assert table.lookup(*key, protocol=CALIBRATION_ONLY).protocol == CALIBRATION_ONLY
    assert table.lookup(*key, protocol="fine-tuned (200 epochs)") is None  # recalled: kept out
    assert table.recalled(*key, protocol="fine-tuned (200 epochs)").value == 77.0
    assert load_published(path, include_recalled=True).lookup(*key, protocol="fine-tuned (200 epochs)").value == 77.0
    # bare "fine-tuned" is its own figure when the ledger has one; a report's fine-tuned rows see every one apart
    assert table.lookup(*key, protocol=FINE_TUNED).value == 76.56
    assert [(f.value, f.protocol) for f in table.fine_tuned(*key)] == [(76.56, "fine-tuned"),
                                                                        (77.0, "fine-tuned (200 epochs)")]
    assert table.recalled(*key) is None and table.recalled(*key, protocol=FINE_TUNED) is None


def test_bare_fine_tuned_query_takes_the_one_figure_whatever_its_epochs(tmp_path: Path):
    path = tmp_path / "published.csv"
    path.write_text(HEADER + "imagenet,m,maskaq,w4a8,top1,fine-tuned (200 epochs),79.44,https://example.org,verified,\n")
    table = load_published(path)
    assert table.lookup("imagenet", "m", "maskaq", "w4a8", "top1", protocol=FINE_TUNED).value == 79.44
    assert table.lookup("imagenet", "m", "maskaq", "w4a8", "top1", protocol="fine-tuned (100 epochs)") is None
    assert table.lookup("imagenet", "m", "maskaq", "w4a8", "top1") is None  # not a calibration-only figure
    path.write_text(HEADER + PROTOCOLS.replace("fine-tuned,76.56", "fine-tuned (100 epochs),76.56"))
    # two fine-tuned figures of different epochs: a bare query cannot choose between them
    assert load_published(path, include_recalled=True).lookup("imagenet", "m", "psaq", "w4a8", "top1",
                                                             protocol=FINE_TUNED) is None


@pytest.mark.parametrize("protocol", ["", "fine tuned", "fine-tuned (0 epochs)", "fine-tuned: lsq_kd", "calibrated"])
def test_missing_or_unknown_protocol_is_one_error_naming_the_row_and_the_forms(tmp_path: Path, protocol: str):
    path = tmp_path / "published.csv"
    path.write_text(HEADER + ROWS + f"imagenet,m,psaq,w6a6,top1,{protocol},60.0,https://example.org,verified,\n")
    with pytest.raises(ValueError) as error:
        load_published(path)
    message = str(error.value)
    assert "('imagenet', 'm', 'psaq', 'w6a6', 'top1')" in message and "line 5" in message
    assert f"protocol {protocol!r}" in message and all(repr(form) in message for form in PROTOCOL_FORMS)
    assert "\n" not in message


def test_epochs_have_one_spelling(tmp_path: Path):
    path = tmp_path / "published.csv"
    path.write_text(HEADER + "imagenet,m,psaq,w4a8,top1,fine-tuned (1 epochs),1.0,https://example.org,verified,\n"
                             "imagenet,m,psaq,w4a8,top1,fine-tuned (1 epoch),2.0,https://example.org,verified,\n")
    with pytest.raises(ValueError, match="fine-tuned \\(1 epoch\\): listed twice"):
        load_published(path)
    with pytest.raises(ValueError, match="is not one of"):
        load_published().lookup("imagenet", "m", "psaq", "w4a8", "top1", protocol="fine-tuned: lsq_kd")


def test_every_shipped_row_names_a_protocol():
    table = shipped()
    assert "protocol" in table.columns
    assert set(table["protocol"]) == {CALIBRATION_ONLY, FINE_TUNED, "fine-tuned (200 epochs)"}
    # PSAQ-ViT's own README is calibration only; PSAQ-ViT V2's student loop trains the quantized model
    readme = table[table["source"].str.startswith("PSAQ-ViT README")]
    assert len(readme) > 0 and set(readme["protocol"]) == {CALIBRATION_ONLY}
    own_v2 = table[(table["method"] == "psaq_v2") & ~table["notes"].str.contains("shared reconstruction backend")]
    assert len(own_v2) > 0 and set(own_v2["protocol"]) == {FINE_TUNED}
    # a fine-tuned figure whose epochs are not given says so, and what its protocol rests on
    tuned = table[table["protocol"] == FINE_TUNED]
    assert all("fine-tuned" in notes and "epochs not given" in notes for notes in tuned["notes"]), tuned


@pytest.mark.parametrize("method, model, bits, value, protocol", [
    ("maskaq", "deit_small_patch16_224", "w4a8", 79.44, "fine-tuned (200 epochs)"),
    ("maskaq", "deit_small_patch16_224", "w4a4", 63.81, "fine-tuned (200 epochs)"),
    ("maskaq", "deit_small_patch16_224", "w3a3", 30.41, "fine-tuned (200 epochs)"),
    ("maskaq", "deit_small_patch16_224", "w5a5", 73.18, "fine-tuned (200 epochs)"),
    ("maskaq", "vit_base_patch16_224", "w4a4", 70.53, "fine-tuned (200 epochs)"),
    ("maskaq", "swin_tiny_patch4_window7_224", "w4a8", 80.19, "fine-tuned (200 epochs)"),
    ("mimiq", "deit_small_patch16_224", "w4a8", 78.48, FINE_TUNED),
    ("mimiq", "deit_small_patch16_224", "w4a4", 62.72, FINE_TUNED),
    ("mimiq", "deit_base_patch16_224", "w3a3", 41.86, FINE_TUNED),
    ("psaq_v2", "deit_small_patch16_224", "w4a8", 78.27, FINE_TUNED),
    ("psaq_v2", "deit_small_patch16_224", "w4a4", 32.57, FINE_TUNED),
    ("psaq", "deit_small_patch16_224", "w4a8", 76.56, FINE_TUNED),
    ("psaq", "deit_tiny_patch16_224", "w5a5", 53.36, FINE_TUNED),
    ("gdfq", "deit_small_patch16_224", "w4a8", 76.49, FINE_TUNED),
    ("qimera", "vit_base_patch16_224", "w5a5", 9.43, FINE_TUNED),
    ("adadfq", "deit_base_patch16_224", "w4a4", 19.22, FINE_TUNED),
])
def test_maskaq_table_rows_are_verified_at_the_pinned_image(method, model, bits, value, protocol):
    figure = load_published().lookup("imagenet", model, method, bits, "top1", protocol=protocol)
    assert figure.value == value and figure.verified_figure and figure.protocol == protocol
    assert figure.source == f"MaskAQ README, Table 1 (images/results.png): {MASKAQ}"


def test_one_setting_has_two_published_protocols():
    """PSAQ-ViT DeiT-S W4A8: 73.23 calibrated only (its README), 76.56 fine-tuned (MaskAQ's Table 1)."""
    table, key = load_published(), ("imagenet", "deit_small_patch16_224", "psaq", "w4a8", "top1")
    assert table.lookup(*key).value == 73.23 and "PSAQ-ViT README" in table.lookup(*key).source
    assert table.lookup(*key, protocol=FINE_TUNED).value == 76.56
    assert [figure.value for figure in table.fine_tuned(*key)] == [76.56]


def test_maskaq_rows_cover_its_table_for_the_harness_models():
    maskaq = shipped()[lambda t: t["source"].str.contains(MASKAQ, regex=False)]
    assert len(maskaq) == 115  # 23 rows of methods x 5 models (ViT-T is no harness model; GenQ, CLAMP-ViT left out)
    assert set(maskaq["model"]) == {"vit_base_patch16_224", "deit_tiny_patch16_224", "deit_small_patch16_224",
                                    "deit_base_patch16_224", "swin_tiny_patch4_window7_224"}
    assert set(maskaq.loc[maskaq["method"] == "maskaq", "protocol"]) == {"fine-tuned (200 epochs)"}
    assert set(maskaq.loc[maskaq["method"] != "maskaq", "protocol"]) == {FINE_TUNED}


def _tuned(record: dict, tuner: str = "lsq_kd") -> dict:
    """A calibration-only record made a fine-tuned one, as the runner writes it (docs/results.md, Protocols)."""
    record = {**record, "tuner": tuner, "label": f"{record['label']} → {tuner}", "cell_id": record["cell_id"][:15] + "t",
              "options": {**record["options"], "tuner": {}}}
    record["code"] = component_code(record["task"], record["generator"], record["calibrator"], tuner)
    record["timing_s"] = {**record["timing_s"], "tune": 30.0}
    return record


def _tuned_grid(make_record, model: str = "deit_small_patch16_224") -> list[dict]:
    calibrated = [make_record(model=model, bits="w4a8", seed=seed, top1=73.0 + seed, fp=79.9) for seed in (0, 1)]
    return [*calibrated, *(_tuned(record) for record in calibrated)]


def test_report_shows_a_published_fine_tuned_figure_apart(tmp_path: Path, make_record):
    path = tmp_path / "published.csv"
    path.write_text(HEADER + PROTOCOLS.replace(",m,", ",deit_small_patch16_224,"))
    report = build_report(_tuned_grid(make_record), tmp_path, published=load_published(path))
    board = report.tasks[0].sections[0].leaderboards[0]
    rows = {row.label: row for row in board.rows}
    assert rows["psaq"].protocol == "calibration only" and rows["psaq → lsq_kd"].protocol == "fine-tuned: lsq_kd"
    # the calibration-only row is compared with the calibration-only figure, never with a fine-tuned one
    assert rows["psaq"].cells[0].published.value == 73.23 and rows["psaq"].cells[0].published.gap == pytest.approx(0.27)
    # a tuned row is not the method's own pipeline (another tuner): no figure in its cell, no gap ...
    assert rows["psaq → lsq_kd"].cells[0].published is None
    # ... but the method's published fine-tuned figures are shown apart, the recalled one marked by its source
    shown = [(f.method, f.bits, f.protocol, f.citation.value, f.citation.gap, f.citation.source.verified)
             for f in board.published_tuned]
    assert shown == [("psaq", "w4a8", "fine-tuned", 76.56, None, "verified"),
                     ("psaq", "w4a8", "fine-tuned (200 epochs)", 77.0, None, "recalled")]
    assert board.recalled == []  # the recalled fine-tuned figure is not a recalled figure of a calibration-only row


def test_calibration_only_board_shows_no_fine_tuned_figures(tmp_path: Path, make_record):
    path = tmp_path / "published.csv"
    path.write_text(HEADER + PROTOCOLS.replace(",m,", ",deit_small_patch16_224,"))
    records = _tuned_grid(make_record)[:2]
    board = build_report(records, tmp_path, published=load_published(path)).tasks[0].sections[0].leaderboards[0]
    assert board.published_tuned == [] and board.rows[0].cells[0].published.value == 73.23


def test_markdown_page_lists_shipped_fine_tuned_figures_apart(tmp_path: Path, make_record, write_records):
    results = write_records(tmp_path / "results", _tuned_grid(make_record))
    write_report(results, tmp_path / "report", formats=("md", "html"))
    page = (tmp_path / "report" / "imagenet.md").read_text()
    line = re.search(r"^Published fine-tuned figures of the fine-tuned rows' methods, .*\(shown apart, no gap\): "
                     r"psaq w4a8 76\.56, fine-tuned \[(\d+)\]\.$", page, flags=re.M)
    assert line, page
    cited = dict(re.findall(r"^- \[(\d+)\] (.*)$", page.split("\n## Sources\n", 1)[1], flags=re.M))
    assert cited[line.group(1)].startswith(f"MaskAQ README, Table 1 (images/results.png): {MASKAQ}")
    assert "pub. 73.23" in page  # the calibration-only row keeps the README's figure and its gap
    html = (tmp_path / "report" / "report.html").read_text()
    assert '<p class="published-tuned muted">Published fine-tuned figures' in html and "psaq w4a8 76.56, fine-tuned" in html
