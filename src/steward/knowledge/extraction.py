"""From an upload to sections of text: plain text, Markdown, HTML and PDF.

A section is a heading (possibly empty) and its paragraphs; the chunker keeps sections and
paragraphs together where it can. HTML is read with the standard library's tokenizer (block
elements end paragraphs, headings start sections, scripts and styles are dropped): no
dependency is needed to get text out of it. PDF text comes from `pypdf`, one paragraph per
blank-line-separated block of each page.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass, field
from html.parser import HTMLParser


class ExtractionError(ValueError):
    """The upload could not be read as its type; the message says why."""


MEDIA_TYPES = {
    "text/plain": "text",
    "text/markdown": "markdown",
    "text/x-markdown": "markdown",
    "text/html": "html",
    "application/pdf": "pdf",
}
_SUFFIXES = {".txt": "text/plain", ".md": "text/markdown", ".markdown": "text/markdown",
             ".html": "text/html", ".htm": "text/html", ".pdf": "application/pdf"}  # fmt: skip


def media_type_of(declared: str | None, filename: str | None) -> str | None:
    """The supported media type of an upload (its declared type, else its file suffix)."""
    base = (declared or "").split(";")[0].strip().lower()
    if base in MEDIA_TYPES:
        return base
    if filename and "." in filename:
        return _SUFFIXES.get("." + filename.rsplit(".", 1)[1].lower())
    return None


@dataclass
class Section:
    heading: str
    paragraphs: list[str] = field(default_factory=list)


_BLANK_LINES = re.compile(r"\n\s*\n")
_SPACES = re.compile(r"[ \t\r\f\v]+")
_MD_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")


def _paragraphs(text: str) -> list[str]:
    blocks = (_SPACES.sub(" ", block).strip() for block in _BLANK_LINES.split(text))
    return [block for block in blocks if block]


def _decode(content: bytes) -> str:
    try:
        text = content.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ExtractionError("the text is not UTF-8") from exc
    return text.replace("\x00", "")


def _plain(content: bytes) -> list[Section]:
    return [Section("", _paragraphs(_decode(content)))]


def _markdown(content: bytes) -> list[Section]:
    sections = [Section("")]
    lines: list[str] = []

    def close() -> None:
        sections[-1].paragraphs.extend(_paragraphs("\n".join(lines)))
        lines.clear()

    fenced = False
    for line in _decode(content).splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        heading = None if fenced else _MD_HEADING.match(line)
        if heading:
            close()
            sections.append(Section(heading.group(2)))
        else:
            lines.append(line)
    close()
    return sections


class _HTMLText(HTMLParser):
    _BLOCKS = frozenset(
        [
            "p",
            "div",
            "br",
            "li",
            "ul",
            "ol",
            "table",
            "tr",
            "td",
            "th",
            "section",
            "article",
            "header",
            "footer",
            "blockquote",
            "pre",
            "dd",
            "dt",
            "dl",
            "main",
            "nav",
            "aside",
            "figure",
            "figcaption",
            "hr",
        ]
    )
    _HEADINGS = frozenset(f"h{i}" for i in range(1, 7))
    _SKIP = frozenset(("script", "style", "noscript", "template", "head"))

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.sections = [Section("")]
        self._text: list[str] = []
        self._heading: list[str] | None = None
        self._skipping = 0

    def _flush(self) -> None:
        paragraph = _SPACES.sub(" ", " ".join(self._text)).strip()
        if paragraph:
            self.sections[-1].paragraphs.append(paragraph)
        self._text = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self._SKIP:
            self._skipping += 1
        elif tag in self._HEADINGS:
            self._flush()
            self._heading = []
        elif tag in self._BLOCKS:
            self._flush()

    def handle_endtag(self, tag: str) -> None:
        if tag in self._SKIP:
            self._skipping = max(0, self._skipping - 1)
        elif tag in self._HEADINGS and self._heading is not None:
            title = _SPACES.sub(" ", " ".join(self._heading)).strip()
            self.sections.append(Section(title))
            self._heading = None
        elif tag in self._BLOCKS:
            self._flush()

    def handle_data(self, data: str) -> None:
        if self._skipping:
            return
        text = data.replace("\n", " ")
        (self._heading if self._heading is not None else self._text).append(text)


def _html(content: bytes) -> list[Section]:
    parser = _HTMLText()
    parser.feed(_decode(content))
    parser.close()
    parser._flush()
    return parser.sections


def _pdf(content: bytes) -> list[Section]:
    from pypdf import PdfReader

    try:
        reader = PdfReader(io.BytesIO(content))
        if reader.is_encrypted:
            raise ExtractionError("the PDF is encrypted")
        pages = [page.extract_text() or "" for page in reader.pages]
    except ExtractionError:
        raise
    except Exception as exc:  # a malformed PDF makes pypdf raise many kinds of error
        raise ExtractionError(f"the PDF could not be read: {type(exc).__name__}") from exc
    section = Section("")
    for page in pages:
        section.paragraphs.extend(_paragraphs(page.replace("\x00", "")))
    return [section]


_EXTRACTORS = {"text": _plain, "markdown": _markdown, "html": _html, "pdf": _pdf}


def extract(media_type: str, content: bytes) -> list[Section]:
    """The upload's sections, without empty ones; raises ExtractionError when it has no text."""
    kind = MEDIA_TYPES.get(media_type)
    if kind is None:
        raise ExtractionError(f"unsupported media type {media_type}")
    sections = [s for s in _EXTRACTORS[kind](content) if s.paragraphs]
    if not sections:
        raise ExtractionError("the document has no text")
    return sections
