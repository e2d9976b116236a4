"""The documentation holds together: every relative link in the README and in docs/ points at a file that
exists, and the README stays a short entry page whose table of contents reaches each of its sections."""
from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
MAX_README_LINES = 250

# [text](target) and ![alt](target), with an optional "title"; the text may hold inline code, not brackets
_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_FENCE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.MULTILINE | re.DOTALL)
_CODE_SPAN = re.compile(r"`[^`\n]*`")
_EXTERNAL = ("http://", "https://", "mailto:", "#")


def _prose(text: str) -> str:
    """The text without code blocks and code spans: a link shown as code is an example, not a link."""
    return _CODE_SPAN.sub("", _FENCE.sub("", text))


def relative_links(text: str) -> list[str]:
    """The targets of the relative links in a Markdown text, anchors and all."""
    return [target for target in _LINK.findall(_prose(text)) if not target.startswith(_EXTERNAL)]


def broken_links(md_file: Path) -> list[str]:
    """The relative links of ``md_file`` whose file (anchor stripped) does not exist beside it."""
    return [target for target in relative_links(md_file.read_text(encoding="utf-8"))
            if not (md_file.parent / unquote(target.split("#", 1)[0])).exists()]


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def sections_missing_from_toc(text: str) -> list[str]:
    """The ``## `` headings of a Markdown text that no ``(#anchor)`` link in it points to."""
    headings = re.findall(r"^## (.+)$", _FENCE.sub("", text), re.MULTILINE)
    anchors = {target[1:] for target in _LINK.findall(text) if target.startswith("#")}
    return [heading for heading in headings if github_slug(heading) not in anchors]


def _doc_pages() -> list[Path]:
    return [README, *sorted((ROOT / "docs").glob("*.md"))]


def test_every_relative_link_resolves():
    broken = [f"{page.relative_to(ROOT)}: {target}" for page in _doc_pages() for target in broken_links(page)]
    assert broken == [], "fix these links (a link from docs/ to a repository file needs ../)"


def test_the_check_sees_a_broken_link(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "code.py").write_text("")
    page = tmp_path / "docs" / "page.md"
    page.write_text("[ok](../code.py#L3) ![figure](missing.png) [gone](../nowhere.md#part)\n"
                    "[web](https://example.org) [here](#top) `[shown](as_code.md)`\n"
                    "```\n[in a block](block.md)\n```\n")
    assert broken_links(page) == ["missing.png", "../nowhere.md#part"]


def test_readme_is_short_with_a_table_of_contents():
    text = README.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= MAX_README_LINES, "move detail from README.md into a docs/ page"
    assert sections_missing_from_toc(text) == [], "link each ## section from the README's contents list"


def test_the_check_sees_a_section_missing_from_the_toc():
    text = ("- [The two commands](#the-two-commands)\n- [Deviations](#deviations-from-the-authors-code-on-purpose)\n"
            "## The two commands\n## Deviations from the authors' code, on purpose\n## Where else\n"
            "```\n## not a heading\n```\n")
    assert sections_missing_from_toc(text) == ["Where else"]
    assert github_slug("Check a GPU install first: `scripts/gpu_smoke.sh`") == \
        "check-a-gpu-install-first-scriptsgpu_smokesh"
