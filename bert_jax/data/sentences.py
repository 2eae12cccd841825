"""A rule-based English sentence splitter for prose (books, docstrings, TFDS articles).

Good enough for pre-training (NSP only needs plausible sentence boundaries), fast (one regex pass
per paragraph plus a set look-up per candidate boundary) and dependency-free.
"""

import re
from collections.abc import Iterable, Iterator

# Words that end with a period without ending a sentence ("Mr. Darcy", "e.g. this").
ABBREVIATIONS = frozenset(
    """
    mr mrs ms messrs mme mlle dr prof rev hon st sr jr capt col gen lt sgt maj cmdr adm gov pres
    sen rep ft mt no nos vol vols fig figs ch chap sec art p pp ed eds al etc vs viz cf ca approx
    esq inc ltd co corp bros dept univ jan feb mar apr jun jul aug sep sept oct nov dec
    e.g i.e a.m p.m u.s u.k
    """.split()
)

# A candidate boundary: terminal punctuation, optional closing quotes/brackets, whitespace, and a
# next sentence that opens with (quotes/brackets/underscores and) an upper-case letter or digit.
# Lower-case continuations ('"Why?" said he.') are deliberately not boundaries.
_CANDIDATE = re.compile(
    r"[.!?\u2026]+[\"'\u2019\u201d)\]_]*(\s+)(?=[\"'\u2018\u201c(\[_]*[A-Z0-9\u00c0-\u00de])"
)
_LEADING_PUNCT = "\"'\u2018\u201c([_*"
_PARAGRAPH_BREAK = re.compile(r"\n\s*\n")  # a line end, blank lines, the next line's start


def split_sentences(paragraph: str) -> list[str]:
    """Sentences of one paragraph, in order; their concatenation keeps every word."""
    sentences = []
    start = 0
    for match in _CANDIDATE.finditer(paragraph):
        end = match.start(1)  # just after the punctuation and closing quotes
        if paragraph[end - 1] == ".":
            # The word ending here, with its period: an abbreviation or an initial
            # ("J. R. R. Tolkien", "4 A. M.") ends no sentence.
            word_start = max(paragraph.rfind(" ", start, end) + 1, start)
            word = paragraph[word_start:end].lstrip(_LEADING_PUNCT).rstrip(".").lower()
            if word in ABBREVIATIONS or (len(word) == 1 and word.isalpha()):
                continue
        sentences.append(paragraph[start:end])
        start = match.end()
    last = paragraph[start:].strip()
    if last:
        sentences.append(last)
    return sentences  # none empty: each holds at least its terminal punctuation


def iter_paragraphs(lines: Iterable[str]) -> Iterator[str]:
    """Paragraphs of some lines: runs of non-blank lines, whitespace collapsed to single spaces."""
    current: list[str] = []
    for line in lines:
        if line and not line.isspace():
            current.append(line)
        elif current:
            yield " ".join(" ".join(current).split())
            current = []
    if current:
        yield " ".join(" ".join(current).split())


def iter_text_paragraphs(blocks: Iterable[str]) -> Iterator[str]:
    """iter_paragraphs of text that arrives in blocks ending at line ends: a regex finds the
    blank lines instead of a Python loop over lines."""
    rest = ""
    for block in blocks:
        parts = _PARAGRAPH_BREAK.split(rest + block)
        rest = parts.pop()  # the last paragraph may go on in the next block
        yield from filter(None, (" ".join(part.split()) for part in parts))
    last = " ".join(rest.split())
    if last:
        yield last


def text_to_sentences(text: str) -> list[str]:
    """Sentences of a multi-paragraph text (blank lines separate paragraphs)."""
    return [s for p in iter_paragraphs(text.splitlines()) for s in split_sentences(p)]
