"""Citations point inside the repository: every ``docs/<page>.md#<anchor>`` names a page that exists and a
heading of it (GitHub's anchor rule), every relative link of the docs pages resolves, and nothing cites the
specification the docs were written from (``../shared/spec``), which a fresh clone does not have."""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
TEXT_SUFFIXES = (".py", ".md", ".yaml", ".cfg", ".ipynb")
# test_published.py parses the published tables out of the specification itself, on purpose; this file
# spells the forbidden patterns out.
MAY_CITE_SPEC = {"tests/test_published.py", "tests/test_doc_links.py"}

DOC_CITATION = re.compile(r"docs/([A-Za-z0-9_-]+\.md)#([A-Za-z0-9_-]*)")
MARKDOWN_LINK = re.compile(r"\]\(([^)\s]+)\)")
FORBIDDEN = {
    "a path into ../shared/spec": re.compile(r"shared/spec"),
    "a spec/<page>.md path": re.compile(r"(?<![\w/.-])spec/\w+\.md"),
    "a bare spec page name (cite docs/<page>.md#<anchor>)":
        re.compile(r"(?<![\w/.-])(protocols|datasets|checkpoints|frameworks|peers)\.md"),
    # A section sign with a number is the spec's numbering; a README's own section (the goldens' and
    # samples' READMEs, which tests read) is named with its file.
    "a bare section number (cite docs/<page>.md#<anchor>)": re.compile(r"(?<!README\.md )§\s?\d"),
}


def github_anchor(heading: str) -> str:
    """GitHub's heading id: the text without markup, lowercase, punctuation dropped except - and _, spaces -> -."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)     # a link or image: its text
    text = re.sub(r"<[^>]+>", "", text).strip().lower()            # inline HTML
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def heading_anchors(markdown: str) -> set[str]:
    """Every heading's anchor, a repeated one suffixed -1, -2, ... as GitHub does; fenced code is skipped."""
    anchors: set[str] = set()
    seen: dict[str, int] = {}
    fence = None
    for line in markdown.splitlines():
        marker = re.match(r"\s*(`{3,}|~{3,})", line)
        if marker:
            if fence is None:
                fence = marker.group(1)[0]
            elif marker.group(1)[0] == fence:
                fence = None
            continue
        heading = None if fence else re.match(r"#{1,6}\s+(.*?)(?:\s+#+)?\s*$", line)
        if heading:
            base = github_anchor(heading.group(1))
            count = seen.get(base, 0)
            seen[base] = count + 1
            anchors.add(base if count == 0 else f"{base}-{count}")
    return anchors


def tracked_text_files() -> list[str]:
    try:
        out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout: the tracked files are unknown")
    return sorted(name for name in out.decode("utf-8").split("\0") if name.endswith(TEXT_SUFFIXES))


def citations() -> list[tuple[str, int, str, str]]:
    found = []
    for name in tracked_text_files():
        for number, line in enumerate((ROOT / name).read_text(encoding="utf-8").splitlines(), 1):
            found += [(name, number, page, anchor) for page, anchor in DOC_CITATION.findall(line)]
    return found


def test_anchor_rule_matches_github():
    assert github_anchor("Pascal-Part-58 and Pascal-Part-108") == "pascal-part-58-and-pascal-part-108"
    assert github_anchor("Table 1: ImageNet") == "table-1-imagenet"
    assert github_anchor("What timm does and does not do") == "what-timm-does-and-does-not-do"
    assert github_anchor("Encoder (`probes/encoders.py`, loading in `probes/zoo/loader.py`)") == \
        "encoder-probesencoderspy-loading-in-probeszooloaderpy"
    assert github_anchor("C# and F#") == "c-and-f"
    assert github_anchor("kNN [classification](#knn)") == "knn-classification"
    text = "# Notes\n## Setup\n```bash\n# not a heading\n```\n## Setup ##\n### Setup\n## C#\n"
    assert heading_anchors(text) == {"notes", "setup", "setup-1", "setup-2", "c"}


def test_every_cited_docs_anchor_is_a_heading_of_its_page():
    found = citations()
    assert found, "no docs/<page>.md#<anchor> citation found: the scan is broken"
    anchors = {path.name: heading_anchors(path.read_text(encoding="utf-8")) for path in DOCS.glob("*.md")}
    broken = [f"{name}:{number}: docs/{page}#{anchor} "
              + ("(no such page)" if page not in anchors else "(no heading with that anchor)")
              for name, number, page, anchor in found if anchor not in anchors.get(page, ())]
    assert not broken, "\n".join(broken)


def test_relative_links_of_the_docs_pages_resolve():
    broken = []
    for path in sorted(DOCS.glob("*.md")):
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            for target in MARKDOWN_LINK.findall(line):
                if re.match(r"[a-z]+:", target):                  # http:, https:, mailto:
                    continue
                file, _, anchor = target.partition("#")
                linked = (path.parent / file).resolve() if file else path
                if not linked.is_relative_to(ROOT):
                    broken.append(f"docs/{path.name}:{number}: {target} (outside the repository)")
                elif not linked.exists():
                    broken.append(f"docs/{path.name}:{number}: {target} (no such file)")
                elif anchor and linked.suffix == ".md" and anchor not in heading_anchors(linked.read_text("utf-8")):
                    broken.append(f"docs/{path.name}:{number}: {target} (no heading with that anchor)")
    assert not broken, "\n".join(broken)


def test_nothing_cites_the_specification_outside_the_repository():
    hits = []
    for name in tracked_text_files():
        if name in MAY_CITE_SPEC or name.startswith("docs/"):
            continue
        for number, line in enumerate((ROOT / name).read_text(encoding="utf-8").splitlines(), 1):
            hits += [f"{name}:{number}: {what}: {line.strip()}" for what, pattern in FORBIDDEN.items()
                     if pattern.search(line)]
    assert not hits, "\n".join(hits)

