"""Reports read the way a script-less reader does: the standard library's HTML parser, no browser."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path


@dataclass
class ParsedSection:
    text: list[str] = field(default_factory=list)
    tables: list[list[list[str]]] = field(default_factory=list)  # rows of cell texts, header row included

    def says(self, words: str) -> bool:
        return " ".join(" ".join(self.text).split()).find(words) >= 0

    def key_values(self, index: int = 0) -> dict[str, str]:
        """A two-column (name, value) table as a dict."""
        return {row[0]: row[1] for row in self.tables[index]}

    def rows(self, index: int) -> list[dict[str, str]]:
        """A table with a header row as dicts."""
        header, *body = self.tables[index]
        return [dict(zip(header, row)) for row in body]


class Page(HTMLParser):
    """Sections (by id) with their text and tables, every tag count, every URL an attribute holds."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.sections: dict[str, ParsedSection] = {}
        self.tags: Counter[str] = Counter()
        self.urls: list[str] = []
        self.images: list[str] = []
        self._section: ParsedSection | None = None
        self._table: list[list[str]] | None = None
        self._row: list[str] | None = None
        self._cell: list[str] | None = None
        self.feed(text)
        self.close()

    @classmethod
    def read(cls, path: str | Path) -> Page:
        return cls(Path(path).read_text(encoding="utf-8"))

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        self.tags[tag] += 1
        self.urls += [v for k, v in found.items() if k in ("src", "href", "xlink:href", "action") and v]
        if tag == "img":
            self.images.append(found.get("src") or "")
        elif tag == "section":
            self._section = self.sections.setdefault(found.get("id") or "", ParsedSection())
        elif tag == "table" and self._section is not None:
            self._table = []
            self._section.tables.append(self._table)
        elif tag == "tr" and self._table is not None:
            self._row = []
            self._table.append(self._row)
        elif tag in ("td", "th") and self._row is not None:
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None and self._row is not None:
            self._row.append(" ".join("".join(self._cell).split()))
            self._cell = None
        elif tag == "table":
            self._table = None
        elif tag == "section":
            self._section = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)
        if self._section is not None:
            self._section.text.append(data)
