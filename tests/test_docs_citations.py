"""Citations a reader can follow: every ``docs/<file>.md, <Section>`` and ``README, <Section>`` in the
repository's code and docs names a section heading that exists."""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SUFFIXES = (".py", ".md", ".j2", ".yaml")
# "docs/methods.md, PSAQ-ViT, step 5": the section runs to the next comma, colon, semicolon, bracket or quote;
# another project's README ("PSAQ-ViT README, Results table", "MaskAQ README, Table 1") is not ours
OTHER_PROJECTS = ("ViT", "MaskAQ")
CITATION = re.compile("".join(f"(?<!{name} )" for name in OTHER_PROJECTS)
                      + r"`?(README|docs/\w+\.md)`?,\s+([A-Z`][^,;:()\[\]\"\n]*)")


def headings(document: Path) -> list[str]:
    return [line.lstrip("#").strip() for line in document.read_text().splitlines() if line.startswith("#")]


def citations(text: str) -> list[tuple[str, str]]:
    """(document, section) pairs; a citation may wrap onto the next line of a comment or docstring."""
    flat = re.sub(r"\n[ \t]*#* ?", " ", text)
    return [(document, section.strip().rstrip(".")) for document, section in CITATION.findall(flat)]


def test_cited_sections_exist():
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    broken = []
    own = Path(__file__).relative_to(ROOT).as_posix()  # its examples are strings about citations, not citations
    for name in (name for name in files if name.endswith(SUFFIXES) and (ROOT / name).is_file() and name != own):
        for document, section in citations((ROOT / name).read_text()):
            path = ROOT / ("README.md" if document == "README" else document)
            if not any(heading.startswith(section) or section.startswith(heading) for heading in headings(path)):
                broken.append(f"{name}: {document}, {section}")
    assert not broken, "citations of sections that do not exist:\n" + "\n".join(broken)


def test_another_projects_readme_is_not_a_citation_of_ours():
    assert citations("PSAQ-ViT README, Results table; MaskAQ README, Table 1; README, Tasks") == [("README", "Tasks")]


def test_a_citation_is_read_up_to_its_section():
    text = 'values (docs/methods.md, PSAQ-ViT, step 5) and\n    # docs/quantizer.md, The `psaq`\n    # placement.'
    assert citations(text) == [("docs/methods.md", "PSAQ-ViT"), ("docs/quantizer.md", "The `psaq` placement")]
