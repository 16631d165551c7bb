"""Random response codes printed on a user's card (research note, weakness 2), pure.

The seed lets users choose their answers; human answers are low-entropy and fall to
offline guessing. Here every code is random: 32 symbols carry 5 bits each, so an
8-symbol code holds 40 bits and any 3 codes together hold 120 bits (at least the 64
bits NIST 800-63B asks of look-up secrets before rate limiting alone is allowed).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from roost.errors import LocalProtocolError, RemoteProtocolError
from roost.guard.suites import RandomBytes

__all__ = [
    "ALPHABET",
    "BITS_PER_SYMBOL",
    "Card",
    "format_card",
    "generate_card",
    "normalize_code",
    "parse_card",
]

# No 0/O and no 1/I: the two pairs people misread on paper. 32 symbols, so one random
# byte modulo 32 is unbiased (256 is a multiple of 32).
ALPHABET = "23456789ABCDEFGHJKLMNPQRSTUVWXYZ"
BITS_PER_SYMBOL = 5
MIN_CODE_LENGTH = 8


@dataclass(frozen=True, slots=True)
class Card:
    """Challenge labels and their codes, in card order; shown once, never stored."""

    entries: tuple[tuple[str, str], ...]

    def code_for(self, label: str) -> str:
        for entry_label, code in self.entries:
            if entry_label == label:
                return code
        raise KeyError(label)


def generate_card(
    pairs: int = 20, code_length: int = MIN_CODE_LENGTH, random_bytes: RandomBytes = os.urandom
) -> Card:
    """Draw ``pairs`` random codes; the caller registers their verifiers, then prints the card."""
    if not 3 <= pairs <= 99:
        raise LocalProtocolError("a card holds 3 to 99 pairs")
    if code_length < MIN_CODE_LENGTH:
        raise LocalProtocolError(f"codes need at least {MIN_CODE_LENGTH} symbols")
    entries = []
    for index in range(pairs):
        raw = random_bytes(code_length)
        code = "".join(ALPHABET[byte % len(ALPHABET)] for byte in raw)
        entries.append((f"{index + 1:02d}", code))
    return Card(tuple(entries))


def normalize_code(text: str) -> bytes:
    """Canonical bytes of a typed code: upper case, separators and spaces dropped."""
    kept = "".join(ch for ch in text.upper() if ch not in " -\t")
    return kept.encode("utf-8")


def format_card(user_id: str, card: Card) -> str:
    """Printable card: one ``label: XXXX-XXXX`` line per pair, two columns."""
    cells = [f"{label}: {code[:4]}-{code[4:]}" for label, code in card.entries]
    lines = [f"Roost response card for {user_id}", ""]
    half = (len(cells) + 1) // 2
    right_column = cells[half:] + [""] * (2 * half - len(cells))
    for left, right in zip(cells[:half], right_column, strict=True):
        lines.append(f"  {left:<24}{right}".rstrip())
    lines.append("")
    lines.append("Keep this card private. Each login asks for a few of these codes.")
    return "\n".join(lines) + "\n"


_CARD_CELL = re.compile(r"(\S{1,32}): ([A-Za-z0-9]{4})-([A-Za-z0-9]{4})")
MAX_CARD_TEXT = 64 * 1024


def parse_card(text: str) -> dict[str, str]:
    """Label → code from a card as :func:`format_card` prints it (for ``--card-file``)."""
    if len(text) > MAX_CARD_TEXT:
        raise RemoteProtocolError("card file is too large", reason="oversized")
    codes = {label: left + right for label, left, right in _CARD_CELL.findall(text)}
    if not codes:
        raise RemoteProtocolError("no codes found in the card", reason="malformed")
    return codes
