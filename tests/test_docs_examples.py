"""Code shown in the docs works as shown: copied into a project, it registers and passes the conformance kit."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from harness.conformance import check
from harness.registry import GENERATORS, METHODS

DOCS = Path(__file__).resolve().parents[1] / "docs"


def python_block(document: Path, heading: str) -> str:
    """The first ```python block under ``## heading`` of ``document``."""
    section = document.read_text().split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.fixture
def fresh_registries(monkeypatch):
    """Registrations made by a test vanish after it, so a docs example may reuse any name."""
    for registry in (GENERATORS, METHODS):
        registry.names()  # discover the real plugins first, so they are not imported into the copy later
        monkeypatch.setattr(registry, "_entries", dict(registry._entries))


def test_the_worked_noise_example_conforms(fresh_registries):
    source = python_block(DOCS / "plugins.md", "Worked example: `methods/noise`")
    renamed = source.replace('"noise"', '"docs_noise"')  # "noise" itself is registered by methods/noise
    assert renamed.count('"docs_noise"') == 3, "the example registers a generator and a method pairing it"
    exec(compile(renamed, "docs/plugins.md", "exec"), {"__name__": "docs_example"})
    check("generator", "docs_noise")
    check("method", "docs_noise")
