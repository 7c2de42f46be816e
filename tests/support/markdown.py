"""Reading the docs as the tests check them: fenced code blocks, relative links, headings."""

import pathlib
import re
import unicodedata
from dataclasses import dataclass
from typing import List, Optional, Tuple

ROOT = pathlib.Path(__file__).resolve().parents[2]
FENCE = re.compile(r"^(```+)\s*([\w+-]*)\s*$")
NOT_RUN = re.compile(r"^<!--\s*not run:\s*(.*?)\s*-->\s*$")
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")


@dataclass(frozen=True)
class Block:
    """One fenced code block of a Markdown file."""

    path: pathlib.Path
    line: int  # of the opening fence, 1-based
    lang: str  # the fence's info string, "" when none
    code: str
    not_run: Optional[str]  # the reason given in a `<!-- not run: ... -->` line before it

    @property
    def name(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def doc_files() -> List[pathlib.Path]:
    """README.md and every Markdown page under docs/."""
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def blocks(path: pathlib.Path) -> List[Block]:
    lines = path.read_text(encoding="utf-8").splitlines()
    found, i = [], 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        end = next((j for j in range(i + 1, len(lines)) if lines[j].strip() == m.group(1)), None)
        if end is None:
            raise AssertionError(f"{path}:{i + 1}: code block never closed")
        marker = NOT_RUN.match(lines[i - 1].strip()) if i else None
        found.append(Block(path, i + 1, m.group(2), "\n".join(lines[i + 1:end]) + "\n",
                           marker.group(1) if marker else None))
        i = end + 1
    return found


def prose(path: pathlib.Path) -> List[Tuple[int, str]]:
    """(line number, text) of the lines outside code blocks."""
    out, fence = [], None
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        m = FENCE.match(line)
        if m and (fence is None or line.strip() == fence):
            fence = None if fence else m.group(1)
            continue
        if fence is None:
            out.append((n, line))
    return out


def slug(heading: str) -> str:
    """The anchor Python-Markdown's toc extension (and so MkDocs) gives a heading."""
    text = re.sub(r"[`*]", "", heading)
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    text = re.sub(r"[^\w\s-]", "", text).strip().lower()
    return re.sub(r"[-\s]+", "-", text)


def anchors(path: pathlib.Path) -> List[str]:
    return [slug(m.group(2)) for _, line in prose(path) if (m := HEADING.match(line))]


def relative_links(path: pathlib.Path) -> List[Tuple[int, str]]:
    """(line, target) of every link that is not a URL (in-page anchors included)."""
    return [(n, target) for n, line in prose(path) for target in LINK.findall(re.sub(r"`[^`]*`", "", line))
            if not re.match(r"^[a-z][a-z0-9+.-]*:", target)]
