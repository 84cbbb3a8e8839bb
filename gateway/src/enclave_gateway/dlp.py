"""Sensitive-data detection in prompts, and pseudonymization with restoration.

Each detector is a regular expression plus, where the format has one, a checksum
(Luhn for card numbers, ISO 7064 mod 97 for IBANs), so that a random 16-digit
number is not a card. A finding is (type, value, start, end).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable, Iterable

ACTIONS = ("block", "log", "pseudonymize")


def luhn_ok(digits: str) -> bool:
    """True when the digit string passes the Luhn check."""
    total = 0
    for index, char in enumerate(reversed(digits)):
        value = ord(char) - 48
        if index % 2 == 1:
            value *= 2
            if value > 9:
                value -= 9
        total += value
    return total % 10 == 0


def iban_ok(value: str) -> bool:
    """True when the IBAN (spaces allowed) passes the ISO 7064 mod-97 check."""
    compact = value.replace(" ", "").upper()
    if not 15 <= len(compact) <= 34:
        return False
    rearranged = compact[4:] + compact[:4]
    number = "".join(str(int(ch, 36)) for ch in rearranged)
    return int(number) % 97 == 1


def _card_ok(value: str) -> bool:
    digits = re.sub(r"[ -]", "", value)
    return 13 <= len(digits) <= 19 and luhn_ok(digits)


@dataclass(frozen=True)
class Detector:
    name: str
    pattern: re.Pattern
    check: Callable[[str], bool] | None = None


BUILTIN: tuple[Detector, ...] = (
    Detector("private_key", re.compile(
        r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY-----(?:[\s\S]*?-----END (?:[A-Z0-9]+ )*PRIVATE KEY-----)?")),
    # US SSN, dashed form; area 000/666/9xx, group 00 and serial 0000 are never issued.
    Detector("ssn", re.compile(r"(?<![\d-])(?!000|666|9\d\d)\d{3}-(?!00)\d{2}-(?!0000)\d{4}(?![\d-])")),
    Detector("credit_card", re.compile(r"(?<![\d-])\d(?:[ -]?\d){12,18}(?![\d])"), _card_ok),
    Detector("iban", re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,30}\b"), iban_ok),
    Detector("aws_access_key", re.compile(r"\b(?:AKIA|ASIA|AGPA|AIDA|AROA|ANPA)[A-Z2-7]{16}\b")),
    Detector("gcp_api_key", re.compile(r"\bAIza[0-9A-Za-z_\-]{35}(?![0-9A-Za-z_\-])")),
    Detector("azure_storage_key", re.compile(r"AccountKey=[A-Za-z0-9+/]{86}==")),
)


@dataclass
class Finding:
    type: str
    value: str
    start: int
    end: int


def compile_extra(patterns: Iterable[dict]) -> tuple[Detector, ...]:
    """Build detectors from configured ``{name, regex}`` entries."""
    out = []
    for entry in patterns:
        name = str(entry["name"])
        if not re.fullmatch(r"[a-z][a-z0-9_]*", name):
            raise ValueError(f"DLP pattern name {name!r} must match [a-z][a-z0-9_]*")
        out.append(Detector(name, re.compile(entry["regex"])))
    return tuple(out)


def scan(text: str, detectors: Iterable[Detector]) -> list[Finding]:
    """All non-overlapping findings in text, earliest first; earlier detectors win overlaps."""
    found: list[Finding] = []
    for detector in detectors:
        for match in detector.pattern.finditer(text):
            value = match.group(0)
            if detector.check is not None and not detector.check(value):
                continue
            if any(f.start < match.end() and match.start() < f.end for f in found):
                continue
            found.append(Finding(detector.name, value, match.start(), match.end()))
    found.sort(key=lambda f: f.start)
    return found


@dataclass
class Pseudonymizer:
    """Replaces values with ``[TYPE_n]`` placeholders and restores them later.

    The same value gets the same placeholder within one request.
    """
    forward: dict[str, str] = field(default_factory=dict)   # value -> placeholder
    reverse: dict[str, str] = field(default_factory=dict)   # placeholder -> value
    counters: dict[str, int] = field(default_factory=dict)

    def placeholder(self, kind: str, value: str) -> str:
        existing = self.forward.get(value)
        if existing is not None:
            return existing
        self.counters[kind] = self.counters.get(kind, 0) + 1
        token = f"[{kind.upper()}_{self.counters[kind]}]"
        self.forward[value] = token
        self.reverse[token] = value
        return token

    def replace(self, text: str, findings: list[Finding]) -> str:
        parts, last = [], 0
        for finding in findings:
            parts.append(text[last:finding.start])
            parts.append(self.placeholder(finding.type, finding.value))
            last = finding.end
        parts.append(text[last:])
        return "".join(parts)

    def _pattern(self) -> re.Pattern:
        return re.compile("|".join(re.escape(token) for token in sorted(self.reverse, key=len, reverse=True)))

    def restore(self, text: str) -> str:
        if not self.reverse or "[" not in text:
            return text
        return self._pattern().sub(lambda m: self.reverse[m.group(0)], text)

    def stream(self) -> "StreamRestorer":
        return StreamRestorer(self)


class StreamRestorer:
    """Restores placeholders in a text stream whose pieces may split a placeholder."""

    def __init__(self, owner: Pseudonymizer):
        self.owner = owner
        self.pending = ""
        self.longest = max((len(t) for t in owner.reverse), default=0)

    def feed(self, piece: str) -> str:
        text = self.pending + piece
        self.pending = ""
        # Hold back a tail that could be the start of a placeholder.
        cut = text.rfind("[")
        if cut != -1 and "]" not in text[cut:] and len(text) - cut < self.longest:
            tail = text[cut:]
            if any(token.startswith(tail) for token in self.owner.reverse):
                self.pending = tail
                text = text[:cut]
        return self.owner.restore(text)

    def flush(self) -> str:
        text, self.pending = self.pending, ""
        return self.owner.restore(text)


def prompt_texts(body: dict) -> list[tuple[list, object]]:
    """(container, key) references to every scannable prompt string in a request."""
    refs: list[tuple[list, object]] = []
    messages = body.get("messages")
    if isinstance(messages, list):
        for message in messages:
            if not isinstance(message, dict):
                continue
            content = message.get("content")
            if isinstance(content, str):
                refs.append((message, "content"))
            elif isinstance(content, list):
                for part in content:
                    if isinstance(part, dict) and isinstance(part.get("text"), str):
                        refs.append((part, "text"))
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        refs.append((body, "prompt"))
    elif isinstance(prompt, list):
        for index, item in enumerate(prompt):
            if isinstance(item, str):
                refs.append((prompt, index))
    if isinstance(body.get("input"), str):
        refs.append((body, "input"))
    elif isinstance(body.get("input"), list):
        for index, item in enumerate(body["input"]):
            if isinstance(item, str):
                refs.append((body["input"], index))
    return refs
