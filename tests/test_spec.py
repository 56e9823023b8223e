"""The project's specification, mini_encdec/SPEC.md, is the one document the code cites:
every citation ("SPEC.md section 3", "SPEC.md sections 1 and 2", older "SPEC 7") names a
section that exists, and nothing cites a document outside the repository."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SPEC = ROOT / "mini_encdec" / "SPEC.md"
# the text a reader meets: code, tests, tutorials, the READMEs, packaging and CI
SOURCES = ["mini_encdec/**/*.py", "mini_encdec/**/*.md", "tests/**/*.py", "tests/**/*.md",
           "tutorials/**/*.py", "tutorials/**/*.md", "*.md", "pyproject.toml", ".ci/*"]
NUMBERS = r"(\d+(?:(?:\s*,\s*|\s+and\s+|\s*-\s*)\d+)*)"
CITATION = re.compile(r"\bSPEC(?:\.md)?,?\s+(?:sections?\s+)?" + NUMBERS)
ANY_SPEC = re.compile(r"\bSPEC\b(?!\.md)")
OUTSIDE = re.compile(r"\b(?:DESIGN|STYLE)\.md\b")


def sources():
    seen = set()
    for pattern in SOURCES:
        for path in sorted(ROOT.glob(pattern)):
            if path.is_file() and path not in (SPEC, Path(__file__).resolve()) \
                    and path not in seen \
                    and not any(part.startswith(".venv") for part in path.parts):
                seen.add(path)
                yield path, path.read_text(errors="replace")


def sections() -> set:
    return {int(n) for n in re.findall(r"^## (\d+)\. ", SPEC.read_text(), flags=re.M)}


def cited(text: str):
    """(line number, section number) of every citation in text."""
    for m in CITATION.finditer(text):
        line = text.count("\n", 0, m.start()) + 1
        parts = re.split(r"\s*,\s*|\s+and\s+", m.group(1))
        for part in parts:
            if "-" in part:
                lo, hi = (int(x) for x in part.split("-"))
                yield from ((line, n) for n in range(lo, hi + 1))
            else:
                yield line, int(part)


def test_the_spec_has_its_sections_in_order():
    assert sorted(sections()) == list(range(1, len(sections()) + 1))
    assert len(sections()) >= 9


def test_every_cited_section_exists():
    have = sections()
    missing = [f"{path.relative_to(ROOT)}:{line}: section {n}"
               for path, text in sources() for line, n in cited(text) if n not in have]
    assert not missing, missing
    assert sum(1 for _, text in sources() for _ in cited(text)) > 50  # the scan finds them


def test_every_mention_of_the_spec_is_the_file_or_a_numbered_section():
    loose = []
    for path, text in sources():
        numbered = {m.start() for m in CITATION.finditer(text)}
        for m in ANY_SPEC.finditer(text):
            if m.start() not in numbered:
                line = text.count("\n", 0, m.start()) + 1
                loose.append(f"{path.relative_to(ROOT)}:{line}")
    assert not loose, loose


def test_nothing_cites_a_document_outside_the_repository():
    outside = [f"{path.relative_to(ROOT)}: {m.group(0)}" for path, text in sources()
               for m in OUTSIDE.finditer(text)]
    assert not outside, outside


def test_the_checker_catches_a_missing_section():
    assert list(cited("see SPEC.md section 99")) == [(1, 99)]
    assert [n for _, n in cited("SPEC.md sections 1 and 2, SPEC 1-3")] == [1, 2, 1, 2, 3]
