#!/usr/bin/env python3
"""Checks the relative links of README.md and every docs/**/*.md.

Each markdown link `[text](target)` (images and reference definitions
`[label]: target` too) whose target is not a URL (http://, https://,
mailto: and other schemes are skipped) must name an existing file or
directory, relative to the linking file (or to the repository root when it
starts with `/`), and a `#fragment` must be the anchor of a heading of the
target markdown file (of the same file for a bare `#fragment`), by GitHub's
rules: lowercase, punctuation other than `-` and `_` dropped, each space a
`-`, and `-1`, `-2`, ... added to repeats. Explicit `<a name=...>` or
`id="..."` anchors count too. Links inside code (fenced blocks and inline
code spans) are not links and are skipped.

Exits 1 listing each broken link as `file:line: target: reason`; otherwise
prints `links: N checked in M files, all resolve`. Uses only the standard
library, so the test command can run it before any environment is set up.
"""
from __future__ import annotations

import re
import sys
import unicodedata
from pathlib import Path
from urllib.parse import unquote

ROOT = Path(__file__).resolve().parent.parent

FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
HEADING = re.compile(r"^ {0,3}(#{1,6})(?:[ \t]+(.*?))?(?:[ \t]+#+)?[ \t]*$")
SETEXT = re.compile(r"^ {0,3}(=+|-+)[ \t]*$")
HTML_ANCHOR = re.compile(r"""<[a-zA-Z][^>]*?\b(?:name|id)\s*=\s*["']([^"']+)["']""")
CODE_SPAN = re.compile(r"(`+)(?:.+?)\1", re.S)
# [text](target) and ![alt](target): target up to the first unescaped `)` at
# nesting depth zero, optionally in <...>, optionally followed by a "title".
INLINE_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*")
REFERENCE_DEF = re.compile(r"^ {0,3}\[[^\]]+\]:\s*(<[^>]*>|\S+)")
SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")


def lines_outside_fences(text: str):
    """(line number, line) for each line not inside a fenced code block."""
    fence = None
    for number, line in enumerate(text.split("\n"), 1):
        match = FENCE.match(line)
        if fence is None:
            if match:
                fence = match.group(1)
                continue
            yield number, line
        elif (
            match
            and match.group(1)[0] == fence[0]
            and len(match.group(1)) >= len(fence)
            and line.strip() == match.group(1)
        ):
            fence = None


def heading_text_to_anchor(text: str) -> str:
    """GitHub's slug for a heading's text (github-slugger's rules)."""
    # What is shown: link text without its target, images' alt text, no
    # emphasis or code markers, no inline HTML tags.
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", text)
    text = re.sub(r"<[^>]+>", "", text)
    text = text.strip().lower()
    kept = []
    for char in text:
        category = unicodedata.category(char)
        if char in "-_ " or category[0] in "LN" or category == "Mn":
            kept.append(char)
    return "".join(kept).replace(" ", "-")


def anchors_of(path: Path, cache: dict[Path, set[str]]) -> set[str]:
    if path in cache:
        return cache[path]
    anchors: set[str] = set()
    seen: dict[str, int] = {}

    def add(slug: str) -> None:
        if slug in seen:
            seen[slug] += 1
            anchors.add(f"{slug}-{seen[slug]}")
        else:
            seen[slug] = 0
            anchors.add(slug)

    previous = ""
    for _, line in lines_outside_fences(path.read_text(encoding="utf-8")):
        for name in HTML_ANCHOR.findall(line):
            anchors.add(name)
        heading = HEADING.match(line)
        if heading:
            add(heading_text_to_anchor(heading.group(2) or ""))
        elif SETEXT.match(line) and previous.strip() and not previous.lstrip().startswith(("|", "-", "*")):
            add(heading_text_to_anchor(previous))
        previous = line
    cache[path] = anchors
    return anchors


def link_targets(line: str):
    """Each link target on one line (code spans blanked out first)."""
    line = CODE_SPAN.sub(lambda m: " " * len(m.group(0)), line)
    definition = REFERENCE_DEF.match(line)
    if definition:
        yield definition.group(1).strip("<>")
        return
    for match in INLINE_LINK.finditer(line):
        rest = line[match.end():]
        if rest.startswith("<"):
            end = rest.find(">")
            if end > 0:
                yield rest[1:end]
            continue
        depth, target = 0, []
        for char in rest:
            if char == "(":
                depth += 1
            elif char == ")":
                if depth == 0:
                    break
                depth -= 1
            elif char in " \t" and depth == 0:
                break  # a "title" follows
            target.append(char)
        else:
            continue  # no closing parenthesis: not a link
        yield "".join(target)


def markdown_files() -> list[Path]:
    files = [ROOT / "README.md"]
    files += sorted((ROOT / "docs").rglob("*.md"))
    return [f for f in files if f.is_file()]


def check(path: Path, cache: dict[Path, set[str]]) -> tuple[int, list[str]]:
    checked, broken = 0, []
    shown = path.relative_to(ROOT)
    for number, line in lines_outside_fences(path.read_text(encoding="utf-8")):
        for target in link_targets(line):
            if not target or SCHEME.match(target) or target.startswith("//"):
                continue
            checked += 1
            where, _, fragment = target.partition("#")
            where = unquote(where.split("?", 1)[0])
            if where:
                base = ROOT if where.startswith("/") else path.parent
                resolved = (base / where.lstrip("/")).resolve()
            else:
                resolved = path
            if not resolved.exists():
                broken.append(f"{shown}:{number}: {target}: no such file or directory")
                continue
            if not fragment:
                continue
            if resolved.is_dir() or resolved.suffix.lower() not in (".md", ".markdown"):
                continue  # GitHub's line anchors and the like: not checked
            if unquote(fragment) not in anchors_of(resolved, cache):
                broken.append(
                    f"{shown}:{number}: {target}: no heading with anchor "
                    f"#{fragment} in {resolved.relative_to(ROOT) if resolved.is_relative_to(ROOT) else resolved}"
                )
    return checked, broken


def main() -> int:
    cache: dict[Path, set[str]] = {}
    files = markdown_files()
    total, broken = 0, []
    for path in files:
        checked, bad = check(path, cache)
        total += checked
        broken += bad
    if broken:
        print(f"links: {len(broken)} of {total} in {len(files)} files do not resolve:", file=sys.stderr)
        for line in broken:
            print(f"  {line}", file=sys.stderr)
        return 1
    print(f"links: {total} checked in {len(files)} files, all resolve")
    return 0


if __name__ == "__main__":
    sys.exit(main())
