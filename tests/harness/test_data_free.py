"""Data-free means data-free: only a generator that declares real data use gets the task (and its images)."""
import json

from harness.plugin.registry import GENERATORS
from harness.run.grid import GridSpec
from harness.run.runner import GridRunner
from reports.render import write_report


def test_only_real_data_generators_see_the_task(tmp_path, monkeypatch):
    seen = {}
    for name in ("noise", "real"):
        generator = GENERATORS.get(name)
        original = generator.generate

        def spy(self, context, original=original, name=name):
            seen[name] = context.task
            return original(self, context)

        monkeypatch.setattr(generator, "generate", spy)
    spec = GridSpec(methods=("noise", "real"), models=("digits_vit_seed0",), bits=("w4a8",), limit=20)
    assert GridRunner(tmp_path).run(spec).computed == 2
    assert seen["noise"] is None and seen["real"] is not None and seen["real"].name == "digits"
    assert not GENERATORS.get("noise").uses_real_data and GENERATORS.get("real").uses_real_data

    data = {r["method"]: r["calibration_data"] for r in map(json.loads, map(
        lambda p: p.read_text(), (tmp_path / "records").glob("*.json")))}
    assert data == {"noise": "data-free", "real": "real"}
    write_report(tmp_path, tmp_path / "report", formats=("md",))
    page = (tmp_path / "report" / "digits.md").read_text()
    row = {label: page.split(f"| {label} | ", 1)[1].split("\n", 1)[0] for label in ("noise", "real")}
    assert row["noise"].endswith("| data-free | calibration only |")  # calibration data, protocol
    assert row["real"].endswith("| real | calibration only |")


def test_no_data_free_generator_declares_real_data():
    """Every registered generator but the real-image baseline is data-free."""
    assert [name for name, generator in GENERATORS.items() if generator.uses_real_data] == ["real"]
