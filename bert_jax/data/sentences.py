"""A rule-based sentence splitter for prose (books, docstrings, TFDS articles): English
abbreviations, sentences that open in any script, Chinese and Japanese full stops.

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


def _letters(keep) -> str:
    """A regex character class body of the letters `keep` accepts, as ranges."""
    ranges, start, prev = [], None, None
    for code in range(0x10000):
        char = chr(code)
        if char.isalpha() and keep(char):
            if start is None or code != prev + 1:
                if start is not None:
                    ranges.append((start, prev))
                start = code
            prev = code
    ranges.append((start, prev))
    return "".join(re.escape(chr(a)) if a == b else f"{re.escape(chr(a))}-{re.escape(chr(b))}"
                   for a, b in ranges)


# A sentence opens with a letter that is not lower-case: upper-case in any cased script (A, É,
# Ł, Σ, Д), or any letter of a caseless one (CJK, Arabic, Devanagari); or with a digit.
_OPENING = _letters(lambda char: not char.islower()) + "0-9"
# A candidate boundary: terminal punctuation, optional closing quotes/brackets, whitespace, and a
# next sentence that opens with (quotes/brackets/underscores and) such a letter or digit.
# Lower-case continuations ('"Why?" said he.') are deliberately not boundaries (so lowercased
# prose is not split: give such a corpus as text:, one sentence per line).
_CANDIDATE = re.compile(
    rf"[.!?\u2026\u061f\u0964]+[\"'\u2019\u201d)\]_]*(\s+)"  # ... Arabic ?, Devanagari danda
    rf"(?=[\"'\u2018\u201c(\[_]*[{_OPENING}])"
)
# Chinese and Japanese full stops end a sentence with or without a space after them.
_CJK_STOPS = "\u3002\uff01\uff1f"  # 。！？
_CJK_END = re.compile(r"[\u3002\uff01\uff1f]+[\u300d\u300f\uff09\u201d]*(\s*)(?=\S)")
_LEADING_PUNCT = "\"'\u2018\u201c([_*"
_PARAGRAPH_BREAK = re.compile(r"\n\s*\n")  # a line end, blank lines, the next line's start


def split_sentences(paragraph: str) -> list[str]:
    """Sentences of one paragraph, in order; their concatenation keeps every word."""
    sentences = []
    start = 0
    matches = _CANDIDATE.finditer(paragraph)
    if any(stop in paragraph for stop in _CJK_STOPS):
        matches = sorted([*matches, *_CJK_END.finditer(paragraph)], key=lambda m: m.start())
    for match in matches:
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
