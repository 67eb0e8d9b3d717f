"""Check every internal link of the built HTML docs: the page exists and so does its ``#anchor``.

    python docs/check_anchors.py docs/_build/html

Sphinx's ``-W`` does not see a link to an anchor that no page defines (a
``[source]`` back-link to an object documented under another name, a
hand-written ``page.html#section``); this does, offline, in a second. Links
with a scheme (``https:``, ``mailto:``) are not followed. Exits 1 and lists
the broken links when there are any.
"""

from __future__ import annotations

import sys
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit


class _Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.ids: set[str] = set()
        self.links: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if value is None:
                continue
            if name == "id" or (tag == "a" and name == "name"):
                self.ids.add(value)
            elif tag == "a" and name == "href":
                self.links.append(value)


def _parse(path: Path) -> _Page:
    page = _Page()
    page.feed(path.read_text(encoding="utf-8", errors="replace"))
    return page


def broken_links(root: Path) -> list[str]:
    """``"page.html: href"`` for every internal link whose page or anchor is missing."""
    pages = {p.resolve(): _parse(p) for p in sorted(root.rglob("*.html"))}
    broken = []
    for path, page in pages.items():
        for href in page.links:
            parts = urlsplit(href)
            if parts.scheme or parts.netloc:
                continue
            target = (path.parent / unquote(parts.path)).resolve() if parts.path else path
            if target.is_dir():
                target = target / "index.html"
            where = f"{path.relative_to(root.resolve())}: {href}"
            if target.suffix != ".html":
                if not target.exists():
                    broken.append(where)
                continue
            missing = target not in pages
            if missing or (parts.fragment and unquote(parts.fragment) not in pages[target].ids):
                broken.append(where)
    return broken


def main(argv: list[str]) -> int:
    root = Path(argv[0] if argv else "docs/_build/html")
    if not (root / "index.html").is_file():
        print(f"no built docs at {root} (index.html missing): run sphinx-build first")
        return 2
    broken = broken_links(root)
    for line in broken:
        print(f"broken link: {line}")
    print(f"{len(broken)} broken internal link(s) in {root}")
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
