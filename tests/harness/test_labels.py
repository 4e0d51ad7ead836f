"""Row labels as fields: the string a record stores, and whether a paper's figure applies (harness.run.labels)."""
import pytest

from harness.quant.convert import QuantConfig
from harness.run.grid import GridSpec, expand
from harness.run.labels import row_label
from reports.aggregate import published_as


def _label(**spec):
    cells = expand(GridSpec(tasks=("digits",), models=("digits_vit_seed0",), bits=("w4a4",), **spec))
    assert len(cells) == 1
    return cells[0], row_label(cells[0])


@pytest.mark.parametrize("spec, text, published", [
    (dict(methods=("psaq",)), "psaq", "psaq"),
    (dict(methods=("psaq",), quant=QuantConfig(profile="psaq")), "psaq [psaq]", "psaq"),
    (dict(methods=("psaq",), calib=("ranking",)), "psaq (psaq+ranking)", None),
    (dict(methods=("psaq",), calib=("ranking",), quant=QuantConfig(profile="psaq")), "psaq (psaq+ranking) [psaq]", None),
    # a changed option is another configuration than the published one, whatever the brackets before it say
    (dict(methods=("psaq",), quant=QuantConfig(profile="psaq"), generator_options={"pse_weight": 0.0}),
     "psaq [psaq] {pse_weight=0.0}", None),
    (dict(data=("real",), calib=("repq",)), "repq_vit", "repq_vit"),
])
def test_only_the_methods_own_pipeline_takes_its_published_figures(spec, text, published):
    cell, label = _label(**spec)
    assert (str(label), label.published_method) == (text, published)
    # reports read it back from the record's fields, not from the string
    record = {**cell.config(), "label": text}
    assert published_as(record) == (published or "")


def test_a_record_whose_plugin_is_gone_takes_no_published_figure():
    cell, _ = _label(methods=("psaq",))
    assert published_as({**cell.config(), "generator": "retired_generator"}) == ""
