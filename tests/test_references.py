"""Every reference in the repository points inside the repository, and every docs link resolves.

A user of a clone can open only what the clone contains. This guards the tracked text files (code,
docs, README, CLI strings, configuration) against:

- citations of files that are not shipped: the project's internal theory, style and developer notes
  (``<NAME>.md`` in capitals), issue numbers as citations, paths into a sibling ``shared/`` folder
  or a development machine's ``/work`` tree;
- ``docs/<page>.md#anchor`` references whose page or anchor does not exist, with anchors computed
  from the headings the way GitHub computes them;
- relative Markdown links in ``docs/`` and ``README.md`` that do not resolve.

The patterns are assembled from pieces so that this file does not match them itself.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

_SKIP_DIRS = {".git", ".venv", "venv", "build", "dist", "__pycache__", ".hypothesis", ".pytest_cache",
              ".ruff_cache", "node_modules"}

#: The anchors other pages and the code cite on the theory page; removing one breaks them.
THEORY_ANCHORS = (
    "definition", "anchored-balls", "gradient-clipping", "rdp-conversion", "model-clipping",
    "output-perturbation", "retrain", "laws", "what-a-certificate-records", "authors-code",
    "utility-limit", "floating-point-and-randomness", "distributed-runs", "exact-routes",
    "soundness-rules", "sequential-requests",
)

_MD = r"\.md"
#: (pattern, what is wrong) for citations of things a clone does not contain.
FORBIDDEN = (
    (re.compile(r"\b(?:" + "THEORY|STYLE|DEVELOPERS" + r")" + _MD + r"\b"),
     "cites a project note that is not in the repository; cite docs/theory.md#<anchor> or a docs/ page"),
    (re.compile(r"\b" + "[Ii]ssue" + r"s?\s*#?\d+\b"),
     "cites an issue number; say what is meant, or cite a docs/ page"),
    (re.compile(r"(?:\.\./)+" + "shared" + r"/|(?<![\w.])" + "shared" + r"/[A-Z]\w*" + _MD),
     "points into a folder outside the repository"),
    (re.compile(r"/" + "work" + r"/(?:shared|wt|main)\b"),
     "points to a development machine's path"),
)

DOCS = "docs" + "/"  # spelt in pieces: the examples below must not be checked as references
_DOCS_REF = re.compile(r"(?<![\w/.-])docs/([\w.-]+" + _MD + r")(?:#([\w-]+))?")
_MORE_ANCHORS = re.compile(r"(?:,\s*|\s+and\s+)#([\w-]+)")  # "<page>.md#a, #b and #c"
_MD_LINK = re.compile(r"!?\[(?:[^\]\\]|\\.)*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_FENCE = re.compile(r"^\s*(```|~~~)")
_HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
_HTML_ID = re.compile(r"<a\s+(?:[^>]*\s)?(?:id|name)=\"([^\"]+)\"", re.IGNORECASE)


# ---------------------------------------------------------------------------------------- helpers
def tracked_files(root: Path = ROOT) -> list[Path]:
    """The repository's files as git sees them (tracked, or new and not ignored), else all outside build folders."""
    try:
        command = ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"]
        out = subprocess.run(command, cwd=root, capture_output=True, check=True, timeout=60).stdout
        files = [root / name for name in out.decode().split("\0") if name]
        if files:
            return [f for f in files if f.is_file()]
    except (OSError, subprocess.SubprocessError):
        pass
    return [p for p in root.rglob("*") if p.is_file() and not (_SKIP_DIRS & set(p.relative_to(root).parts))
            and not any(part.endswith(".egg-info") for part in p.relative_to(root).parts)]


def read_text(path: Path) -> str | None:
    """The file as UTF-8 text, or ``None`` for a binary file."""
    data = path.read_bytes()
    if b"\0" in data:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def text_files(root: Path = ROOT) -> Iterator[tuple[Path, str]]:
    """``(path, text)`` for every tracked text file."""
    for path in tracked_files(root):
        text = read_text(path)
        if text is not None:
            yield path, text


def outside_fences(text: str) -> Iterator[tuple[int, str]]:
    """``(line number, line)`` of the Markdown lines outside fenced code blocks."""
    fence = None
    for number, line in enumerate(text.splitlines(), 1):
        m = _FENCE.match(line)
        if m:
            if fence is None:
                fence = m.group(1)
            elif m.group(1) == fence:
                fence = None
            continue
        if fence is None:
            yield number, line


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a heading: rendered text, lower case, punctuation dropped, spaces → '-'."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # links and images: keep their text
    text = re.sub(r"<[^>]+>", "", text)  # inline HTML tags
    text = text.lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(markdown: str) -> set[str]:
    """Every anchor a Markdown page defines: heading slugs (with GitHub's -1, -2 for repeats) and ids."""
    seen: dict[str, int] = {}
    out: set[str] = set()
    for _, line in outside_fences(markdown):
        m = _HEADING.match(line)
        if m:
            slug = github_slug(m.group(2))
            n = seen.get(slug, 0)
            seen[slug] = n + 1
            out.add(slug if n == 0 else f"{slug}-{n}")
        out.update(_HTML_ID.findall(line))
    return out


@cache
def _page_anchors(path: Path) -> frozenset[str] | None:
    if not path.is_file():
        return None
    return frozenset(anchors(path.read_text(encoding="utf-8")))


def forbidden_references(text: str) -> list[tuple[int, str, str]]:
    """``(line, matched text, why)`` for each citation of something outside the repository."""
    found = []
    for number, line in enumerate(text.splitlines(), 1):
        for pattern, why in FORBIDDEN:
            found.extend((number, m.group(0), why) for m in pattern.finditer(line))
    return found


_NOTE = re.compile(r"\b[A-Z][A-Z0-9_-]+" + _MD + r"\b")  # capitalised Markdown names, like the README


def missing_notes(text: str, shipped: set[str]) -> list[tuple[int, str]]:
    """``(line, name)`` for each capitalised ``<NAME>.md`` that no file in the repository is called."""
    return [(number, m.group(0)) for number, line in enumerate(text.splitlines(), 1)
            for m in _NOTE.finditer(line) if m.group(0) not in shipped]


def broken_docs_references(text: str, root: Path = ROOT) -> list[tuple[int, str, str]]:
    """``(line, reference, why)`` for each ``docs/<page>.md[#anchor]`` whose page or anchor is missing."""
    found = []
    for number, line in enumerate(text.splitlines(), 1):
        for m in _DOCS_REF.finditer(line):
            page, anchor = m.group(1), m.group(2)
            known = _page_anchors(root / "docs" / page)
            if known is None:
                found.append((number, m.group(0), f"docs/{page} does not exist"))
                continue
            cited = [anchor] if anchor else []
            end = m.end()
            while anchor and (more := _MORE_ANCHORS.match(line, end)):
                cited.append(more.group(1))
                end = more.end()
            found.extend((number, f"docs/{page}#{a}", f"docs/{page} has no heading with anchor #{a}")
                         for a in cited if a not in known)
    return found


def broken_markdown_links(path: Path, text: str) -> list[tuple[int, str, str]]:
    """``(line, link, why)`` for each relative link of a Markdown page that does not resolve."""
    found = []
    for number, line in outside_fences(text):
        line = re.sub(r"`[^`]*`", "", line)  # code spans are not links
        for m in _MD_LINK.finditer(line):
            target = m.group(1)
            if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.IGNORECASE):  # http:, https:, mailto:, ...
                continue
            file_part, _, anchor = target.partition("#")
            resolved = (path.parent / file_part).resolve() if file_part else path.resolve()
            if not resolved.exists():
                found.append((number, target, f"{file_part} does not exist"))
                continue
            if anchor and resolved.suffix == ".md":
                known = _page_anchors(resolved)
                if known is not None and anchor not in known:
                    found.append((number, target, f"{resolved.name} has no heading with anchor #{anchor}"))
    return found


def _report(problems: list[str]) -> str:
    shown = problems[:60]
    more = f"\n... and {len(problems) - len(shown)} more" if len(problems) > len(shown) else ""
    return f"{len(problems)} reference(s) point outside the repository or nowhere:\n" + "\n".join(shown) + more


# ---------------------------------------------------------------------------------------- the guard
def test_no_reference_to_files_outside_the_repository():
    """No tracked text file cites an unshipped note, an issue number or a path outside the clone."""
    problems = [f"{path.relative_to(ROOT)}:{line}: {hit!r} {why}"
                for path, text in text_files() for line, hit, why in forbidden_references(text)]
    assert not problems, _report(problems)


def test_capitalised_notes_cited_are_shipped():
    """Any ``<NAME>.md`` cited anywhere (README.md, ...) is a file of the repository, not a private note."""
    shipped = {path.name for path in tracked_files()}
    problems = [f"{path.relative_to(ROOT)}:{line}: {name} is not a file of the repository"
                for path, text in text_files() for line, name in missing_notes(text, shipped)]
    assert not problems, _report(problems)


def test_docs_references_name_existing_pages_and_anchors():
    """Every ``docs/<page>.md#anchor`` in code, docs and README names a page and a heading that exist."""
    problems = [f"{path.relative_to(ROOT)}:{line}: {ref!r}: {why}"
                for path, text in text_files() for line, ref, why in broken_docs_references(text)]
    assert not problems, _report(problems)


def test_relative_markdown_links_resolve():
    """Relative links (and their anchors) in README.md and docs/ point to files and headings that exist."""
    pages = [p for p in tracked_files() if p.suffix == ".md"
             and (p == ROOT / "README.md" or (ROOT / "docs") in p.parents)]
    assert ROOT / "README.md" in pages
    problems = [f"{path.relative_to(ROOT)}:{line}: ({link}): {why}"
                for path in pages for line, link, why in broken_markdown_links(path, path.read_text(encoding="utf-8"))]
    assert not problems, _report(problems)


def test_theory_page_has_every_cited_anchor():
    """docs/theory.md defines each anchor the code and docs cite, and the README links to it."""
    page = ROOT / "docs" / "theory.md"
    assert page.is_file()
    missing = [a for a in THEORY_ANCHORS if a not in anchors(page.read_text(encoding="utf-8"))]
    assert not missing, f"docs/theory.md lacks headings for #{', #'.join(missing)}"
    assert "docs/theory.md" in (ROOT / "README.md").read_text(encoding="utf-8")


# ---------------------------------------------------------------------------------------- the guard's teeth
@pytest.mark.parametrize("text", [
    "Source: " + "THEORY" + ".md §2.",
    "see " + "STYLE" + ".md §3.1",
    "(" + "DEVELOPERS" + ".md layout)",
    "the reproduction benchmark (" + "issue" + " 5)",
    "fixed in " + "Issue" + " #12",
    "the contract is `" + "shared" + "/" + "THEORY" + ".md`",
    "open ../" + "shared" + "/notes.txt",
    "/" + "work" + "/shared/THEORY",
])
def test_forbidden_references_are_detected(text):
    """Each kind of outside reference is caught (the guard can fail)."""
    assert forbidden_references(text)


@pytest.mark.parametrize("text", [
    "see " + DOCS + "theory.md#gradient-clipping",
    "certificates: issue, sign, verify",
    "issue(schedule, record, previous=prev)",
    "the shared noise draw",
])
def test_ordinary_text_is_not_flagged(text):
    """In-repository citations and ordinary words are not references outside the repository."""
    assert not forbidden_references(text)


def test_unshipped_notes_are_detected():
    """A capitalised note is flagged unless a file of that name is shipped."""
    text = "see README.md and " + "TODO" + ".md, not readme.md"
    assert missing_notes(text, {"README.md"}) == [(1, "TODO" + ".md")]


@pytest.mark.parametrize(("heading", "slug"), [
    ("Definition", "definition"),
    ("Authors' code", "authors-code"),
    ("What a certificate records", "what-a-certificate-records"),
    ("The accountant (`certun.accountant`)", "the-accountant-certunaccountant"),
    ("Gradient clipping: Rényi bound (§2)", "gradient-clipping-rényi-bound-2"),
    ("3. Verify: `certun verify`", "3-verify-certun-verify"),
    ("Link [to docs](x.md) here", "link-to-docs-here"),
])
def test_github_slug(heading, slug):
    """Anchors are computed as GitHub renders them."""
    assert github_slug(heading) == slug


def test_broken_docs_reference_and_link_are_detected(tmp_path):
    """A missing page, a missing anchor and a dangling relative link are each reported."""
    docs = tmp_path / "docs"
    docs.mkdir()
    page = docs / "a.md"
    page.write_text("# A page\n\n## Same\n\n## Same\n\n```bash\n# not a heading\n```\n", encoding="utf-8")
    assert anchors(page.read_text(encoding="utf-8")) == {"a-page", "same", "same-1"}
    _page_anchors.cache_clear()
    ok = f"{DOCS}a.md#same-1 and {DOCS}a.md"
    assert not broken_docs_references(ok, tmp_path)
    bad = broken_docs_references(f"{DOCS}a.md#not-a-heading, {DOCS}b.md#x, {DOCS}a.md#not-a-heading", tmp_path)
    assert [ref for _, ref, _ in broken_docs_references(f"({DOCS}a.md#same, #same-1 and #nope)", tmp_path)] \
        == [f"{DOCS}a.md#nope"]
    assert [why for _, _, why in bad] == [f"{DOCS}a.md has no heading with anchor #not-a-heading",
                                          f"{DOCS}b.md does not exist",
                                          f"{DOCS}a.md has no heading with anchor #not-a-heading"]
    links = "# C\n[ok](a.md#same) [self](#c) [web](https://example.org/x.md) `[code](nowhere.md)`\n" \
            "[gone](b.md) [bad anchor](a.md#nope) ![img](img/p.png) [bad self](#d)\n"
    (docs / "c.md").write_text(links, encoding="utf-8")
    bad = broken_markdown_links(docs / "c.md", links)
    assert [link for _, link, _ in bad] == ["b.md", "a.md#nope", "img/p.png", "#d"]
    _page_anchors.cache_clear()
