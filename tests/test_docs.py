"""The documentation's links, anchors and the README's promises.

Every Markdown link or image in README.md and docs/**/*.md that is not a web or mail address
must point at a file or folder inside the repository, resolved against the folder of the file
that holds it; a ``#anchor`` must be the GitHub slug of a heading of the page it names. The
README stays short (at most 250 lines) and its Set up block keeps the two commands CI runs.
Standard library only, so it runs without the package's optional dependencies.
"""
from __future__ import annotations

import functools
import re
from pathlib import Path
from urllib.parse import unquote

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
MAX_README_LINES = 250

# [text](target) and ![alt](target), with an optional "title"; text holds no brackets.
LINK = re.compile(r"!?\[[^\]\n]*\]\(\s*<?([^)\s>]*)>?(?:\s+\"[^\"]*\")?\s*\)")
FENCE = re.compile(r"^\s*(```|~~~)")
INLINE_CODE = re.compile(r"(`+)(?:(?!\1).)+?\1")
HEADING = re.compile(r"^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
EXTERNAL = ("http://", "https://", "mailto:")


def markdown_files() -> list[Path]:
    """README.md and every .md file under docs/, sorted."""
    return [README] + sorted((ROOT / "docs").rglob("*.md"))


def prose_lines(path: Path, blank_inline_code: bool = True) -> list[tuple[int, str]]:
    """(line number, text) of the lines outside fenced code blocks; inline code blanked out
    (same length) unless asked otherwise."""
    out, fenced = [], False
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if FENCE.match(line):
            fenced = not fenced
        elif not fenced:
            if blank_inline_code:
                line = INLINE_CODE.sub(lambda m: " " * len(m.group(0)), line)
            out.append((number, line))
    return out


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a heading: markup dropped, lower case, punctuation other than
    '-' and '_' removed, spaces to '-'."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)   # a link keeps its text
    text = re.sub(r"<[^>]+>", "", text).replace("`", "").lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


@functools.lru_cache(maxsize=None)
def anchors(path: Path) -> frozenset[str]:
    """Every heading anchor of a Markdown file; repeated headings get -1, -2, ... as on GitHub."""
    seen: dict[str, int] = {}
    found = set()
    for _, line in prose_lines(path, blank_inline_code=False):
        m = HEADING.match(line)
        if not m:
            continue
        slug = github_slug(m.group(2))
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        found.add(slug if n == 0 else f"{slug}-{n}")
    return frozenset(found)


def links(path: Path) -> list[tuple[int, str]]:
    """(line number, target) of every link and image of a Markdown file, code excluded."""
    return [(n, m.group(1)) for n, line in prose_lines(path) for m in LINK.finditer(line)]


def where(path: Path, line: int) -> str:
    return f"{path.relative_to(ROOT)}:{line}"


def test_helpers_on_known_cases() -> None:
    """The slug and link rules, on cases worked out by hand from GitHub's behaviour."""
    assert github_slug("Preparing data: `tunesam prepare`") == "preparing-data-tunesam-prepare"
    assert github_slug("Parameter counts beside the paper's Table 3") == \
        "parameter-counts-beside-the-papers-table-3"
    assert github_slug("Metrics and metrics.json") == "metrics-and-metricsjson"
    assert github_slug("LiteMedSAM's real weights, offline") == "litemedsams-real-weights-offline"
    assert github_slug("A, B and C_d") == "a-b-and-c_d"
    line = 'See ![a](x.png) and [b](y.md#z "t") but not `[c](nowhere.md)`.'
    masked = INLINE_CODE.sub(lambda m: " " * len(m.group(0)), line)
    assert [m.group(1) for m in LINK.finditer(masked)] == ["x.png", "y.md#z"]


@pytest.mark.parametrize("path", markdown_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(path: Path) -> None:
    problems = []
    for line, target in links(path):
        if not target or target.lower().startswith(EXTERNAL):
            continue
        file_part, _, anchor = target.partition("#")
        dest = (path.parent / unquote(file_part)).resolve() if file_part else path
        if file_part:
            if ROOT not in dest.parents and dest != ROOT:
                problems.append(f"{where(path, line)}: {target!r} leaves the repository")
                continue
            if not dest.exists():
                problems.append(f"{where(path, line)}: {target!r} not found "
                                f"(looked for {dest.relative_to(ROOT)})")
                continue
        if anchor:
            if dest.suffix != ".md" or dest.is_dir():
                problems.append(f"{where(path, line)}: {target!r} has an anchor on a file that "
                                "is not Markdown")
            elif anchor not in anchors(dest):
                problems.append(f"{where(path, line)}: {target!r}: no heading of "
                                f"{dest.relative_to(ROOT)} has the anchor #{anchor}")
    assert not problems, "broken documentation links:\n" + "\n".join(problems)


def test_readme_is_short() -> None:
    n = len(README.read_text(encoding="utf-8").splitlines())
    assert n <= MAX_README_LINES, (f"README.md has {n} lines, at most {MAX_README_LINES}: move "
                                   "reference content to docs/ and measurements to docs/results/")


def test_readme_set_up_block_keeps_the_ci_commands() -> None:
    """CI runs the README's set-up commands: the first code block under '## Set up' must still
    hold the line that ends with the demo and the one that ends with the test suite."""
    lines = README.read_text(encoding="utf-8").splitlines()
    starts = [i for i, line in enumerate(lines) if line.strip() == "## Set up"]
    assert starts, "README.md: no '## Set up' heading"
    block, inside = [], False
    for line in lines[starts[0] + 1:]:
        if line.startswith("## ") and not inside:
            break
        if FENCE.match(line):
            if inside:
                break
            inside = True
            continue
        if inside:
            block.append(line)
    assert block, f"README.md:{starts[0] + 1}: no code block under '## Set up'"
    commands = [line.strip() for line in block if not line.strip().startswith("#")]
    for tail in (".venv/bin/tunesam demo", ".venv/bin/python -m pytest -q"):
        found = [c for c in commands if c.startswith("python3 -m venv .venv") and c.endswith(tail)]
        assert found, (f"README.md:{starts[0] + 1}: the Set up block has no command line "
                       f"'python3 -m venv .venv ... {tail}'")
