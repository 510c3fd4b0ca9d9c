"""Whole numbers from untrusted text. `str.isdigit()` accepts "²" and other Unicode digits that
`int()` refuses, and `int()` refuses more than 4,300 digits: both were 500s. These read ASCII
digits only, within bounds, or say why not."""

from __future__ import annotations

import re

_ASCII_DIGITS = re.compile(r"[0-9]+")


def whole_number(text: str, *, minimum: int, maximum: int) -> int | None:
    """`text` as an int in [minimum, maximum] if it is only ASCII digits; None otherwise."""
    if not _ASCII_DIGITS.fullmatch(text) or len(text) > len(str(maximum)):
        return None
    value = int(text)
    return value if minimum <= value <= maximum else None
