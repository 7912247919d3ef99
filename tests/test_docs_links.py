"""The README and docs/ are self-contained: every relative link and image resolves inside the
repository, every anchor names a heading, every repository path they quote exists, and no text
points at things outside the repository."""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
DOCS = sorted([REPO_ROOT / "README.md", *(REPO_ROOT / "docs").glob("*.md")])
IDS = [p.relative_to(REPO_ROOT).as_posix() for p in DOCS]

FENCE = re.compile(r"^ {0,3}(```|~~~).*?^ {0,3}\1", re.M | re.S)
CODE_SPAN = re.compile(r"(`+)(.+?)\1", re.S)
INLINE_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE_DEF = re.compile(r"^ {0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)", re.M)
HTML_ATTR = re.compile(r"""<(?:img|a|source)\b[^>]*?\b(?:src|href)\s*=\s*["']([^"']+)["']""", re.I)
HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$", re.M)
# Repository paths quoted in code spans: `tests/x.py::test_y`, `docs/images`, `pyproject.toml`.
TOP_LEVEL = (
    "cliprnn/",
    "operators/",
    "tests/",
    "docs/",
    "scripts/",
    "requirements/",
    ".ci/",
    "js/",
)
ROOT_FILES = {"pyproject.toml", "Makefile", "fiftyone.yml", "manifest.json", "requirements.txt",
              "LICENSE", "CITATION.cff", "README.md", "__init__.py"}  # fmt: skip
# Text that refers to what a reader of the repository does not have.
OUTSIDE = [
    (re.compile(r"\.\./shared|shared/(golden|reference|design)\b"), "a folder outside the repo"),
    (re.compile(r"(?<![\w.])/(work|home|root|Users)/\w"), "an absolute local path"),
    (re.compile(r"\bissue #?\d+|#\d+\b(?! ?[,.]\d)"), "an issue number"),
    (re.compile(r"\b(this|the) (task|session)\b|\bour (build )?machines?\b", re.I), "the work"),
]


def _prose(text: str) -> str:
    """The text without fenced code blocks (links and headings inside them are not real)."""
    return FENCE.sub("", text)


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    text = CODE_SPAN.sub(lambda m: m.group(2), heading)
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", text)  # a link keeps its text
    text = unicodedata.normalize("NFC", text.strip().lower())
    text = "".join(c for c in text if c.isalnum() or c in " -_")
    return text.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for m in HEADING.finditer(_prose(path.read_text(encoding="utf-8"))):
        slug = _slug(m.group(2))
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def _targets(text: str) -> list[str]:
    prose = CODE_SPAN.sub("", _prose(text))
    found = INLINE_LINK.findall(prose) + REFERENCE_DEF.findall(prose) + HTML_ATTR.findall(prose)
    return [t for t in found if not re.match(r"^[a-z][a-z0-9+.-]*:", t, re.I)]  # no URLs


def _quoted_paths(text: str) -> list[str]:
    out = []
    for m in CODE_SPAN.finditer(_prose(text)):
        span = m.group(2).strip()
        token = span.split()[0] if span.split() else ""
        token = token.split("::")[0].rstrip(",;:)")
        if token.startswith(TOP_LEVEL) or token in ROOT_FILES:
            out.append(token)
    return out


def test_the_documents_are_found() -> None:
    names = {p.name for p in DOCS}
    assert {"README.md", "plugin.md", "development.md"} <= names
    assert (REPO_ROOT / "docs" / "README.md") in DOCS  # the index


@pytest.mark.parametrize("doc", DOCS, ids=IDS)
def test_relative_links_and_images_resolve_inside_the_repository(doc: Path) -> None:
    problems = []
    for target in _targets(doc.read_text(encoding="utf-8")):
        path_part, _, anchor = target.partition("#")
        dest = (doc.parent / path_part).resolve() if path_part else doc
        if not dest.is_relative_to(REPO_ROOT):
            problems.append(f"{target}: outside the repository")
        elif not dest.exists():
            problems.append(f"{target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
            problems.append(f"{target}: no heading #{anchor} in {dest.name}")
    assert not problems, f"{doc.relative_to(REPO_ROOT)}: " + "; ".join(problems)


def _test_names() -> set[str]:
    """Every test function and test module name under tests/."""
    names = set()
    for path in (REPO_ROOT / "tests").rglob("test_*.py"):
        names.add(path.stem)
        names.update(re.findall(r"^\s*(?:async )?def (test_\w+)", path.read_text(), re.M))
    return names


def _quoted_tests(text: str) -> list[str]:
    return [
        name
        for m in CODE_SPAN.finditer(_prose(text))
        for name in re.findall(r"\btest_\w+", m.group(2))
    ]


@pytest.mark.parametrize("doc", DOCS, ids=IDS)
def test_quoted_test_names_exist(doc: Path) -> None:
    known = _test_names()
    missing = [
        name
        for name in _quoted_tests(doc.read_text(encoding="utf-8"))
        if name not in known and not (name.endswith("_") and any(k.startswith(name) for k in known))
    ]
    assert not missing, f"{doc.relative_to(REPO_ROOT)} names tests that do not exist: {missing}"


@pytest.mark.parametrize("doc", DOCS, ids=IDS)
def test_quoted_repository_paths_exist(doc: Path) -> None:
    missing = []
    for token in _quoted_paths(doc.read_text(encoding="utf-8")):
        base = token.split("{")[0].split("<")[0]  # `.../{proposal,classifier}`, `<name>` forms
        if "*" in base:
            if not list(REPO_ROOT.glob(base)):
                missing.append(token)
        elif not (REPO_ROOT / base).exists():
            missing.append(token)
    assert not missing, f"{doc.relative_to(REPO_ROOT)} quotes paths that do not exist: {missing}"


@pytest.mark.parametrize("doc", DOCS, ids=IDS)
def test_no_text_points_outside_the_repository(doc: Path) -> None:
    found = []
    for n, line in enumerate(doc.read_text(encoding="utf-8").splitlines(), 1):
        for pattern, what in OUTSIDE:
            m = pattern.search(line)
            if m:
                found.append(f"line {n}: {m.group(0)!r} ({what})")
    assert not found, f"{doc.relative_to(REPO_ROOT)}: " + "; ".join(found)


def test_the_checks_catch_what_they_should(tmp_path: Path) -> None:
    text = (
        "# Title\n\n## A `code` heading: with (punctuation)\n\n"
        "[ok](#a-code-heading-with-punctuation) [bad](#nope) ![img](missing.png)\n"
        "[up](../../../etc/passwd) [web](https://example.com) `tests/not_a_file.py::test_x`\n"
        "```\n[in code](nowhere.md)\n```\n"
    )
    doc = tmp_path / "x.md"
    doc.write_text(text)
    assert _targets(text) == ["#a-code-heading-with-punctuation", "#nope", "missing.png",
                              "../../../etc/passwd"]  # fmt: skip
    assert _anchors(doc) == {"title", "a-code-heading-with-punctuation"}
    assert _quoted_paths(text) == ["tests/not_a_file.py"]
    assert _quoted_tests(text) == ["test_x"]
    assert "test_the_checks_catch_what_they_should" in _test_names()
    assert [bool(p.search(s)) for p, _ in OUTSIDE for s in ("see issue #12",)] == [
        False, False, True, False
    ]  # fmt: skip
    assert OUTSIDE[0][0].search("`../shared/golden/` holds")
    assert OUTSIDE[3][0].search("no GPU was lent to this task")
    assert not any(p.search("a 4,000×3,000 JPEG; 3 of 5 runs; x.y #3,5") for p, _ in OUTSIDE)
