"""Parse ``WWW-Authenticate`` headers into challenges (RFC 7235, section 4.1).

One header may carry several challenges, and a response may carry several
headers::

    Bearer realm="https://auth.example/token",service="registry", Basic realm="x"

A name followed by ``=`` and a value is a parameter of the challenge before
it. A name followed by a space, a comma or the end starts a new challenge.
The parser is lenient where registries are known to stray from the grammar:
it accepts unquoted values that are not tokens (``realm=https://host/token``)
and empty list elements.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass, field

_TOKEN_CHARS = frozenset("!#$%&'*+-.^_`|~" + string.ascii_letters + string.digits)
_SPACE = " \t"
# token68 = 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"=", and it
# must be the whole of the challenge's credentials, so a comma or the end follows.
_TOKEN68 = re.compile(r"([A-Za-z0-9\-._~+/]+=*)[ \t]*(?=,|$)")


@dataclass(frozen=True)
class Challenge:
    """One authentication challenge: its scheme and its parameters.

    ``scheme`` and the parameter names are lower-case because both are
    case-insensitive. A repeated parameter keeps its first value.
    """

    scheme: str
    params: dict[str, str] = field(default_factory=dict)
    token68: str | None = None


def parse_challenges(headers: list[str]) -> list[Challenge]:
    """Parse the values of every ``WWW-Authenticate`` header, in order.

    Raises ValueError naming the header and position when a value cannot be
    parsed, such as an unterminated quoted string.
    """
    challenges: list[Challenge] = []
    for header in headers:
        challenges.extend(_parse_header(header))
    return challenges


def _parse_header(header: str) -> list[Challenge]:
    scanner = _Scanner(header)
    challenges: list[Challenge] = []
    while scanner.skip_separators():
        name = scanner.read_token()
        if scanner.skip_equals():
            if not challenges:
                raise scanner.error(f"parameter {name!r} comes before any scheme")
            value = scanner.read_value()
            challenges[-1].params.setdefault(name.lower(), value)
        else:
            challenges.append(Challenge(name.lower(), {}, scanner.read_token68()))
    return challenges


class _Scanner:
    """A cursor over one header value."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.position = 0

    def skip_separators(self) -> bool:
        """Skip spaces and commas; return False at the end of the text."""
        while self._next_in(_SPACE + ","):
            self.position += 1
        return not self._at_end()

    def read_token(self) -> str:
        start = self.position
        while self._next_in(_TOKEN_CHARS):
            self.position += 1
        if self.position == start:
            raise self.error("expected a scheme or parameter name")
        return self.text[start : self.position]

    def skip_equals(self) -> bool:
        """Consume ``BWS "=" BWS`` when a parameter value follows it."""
        start = self.position
        self._skip_spaces()
        if self._peek() == "=":
            self.position += 1
            self._skip_spaces()
            if not self._at_end() and not self._next_in(",="):
                return True
        self.position = start
        return False

    def read_value(self) -> str:
        """Read a quoted string, or an unquoted value up to a space or comma."""
        if self._peek() == '"':
            return self._read_quoted()
        start = self.position
        while not self._at_end() and not self._next_in(_SPACE + ","):
            self.position += 1
        return self.text[start : self.position]

    def read_token68(self) -> str | None:
        """Read the token68 credentials that may follow a scheme and a space."""
        if not self._next_in(_SPACE):
            return None
        start = self.position
        self._skip_spaces()
        match = _TOKEN68.match(self.text, self.position)
        if match is None:
            self.position = start
            return None
        self.position = match.end()
        return match.group(1)

    def error(self, problem: str) -> ValueError:
        return ValueError(
            f"invalid WWW-Authenticate header {self.text!r}: {problem} "
            f"at position {self.position}"
        )

    def _read_quoted(self) -> str:
        start = self.position
        self.position += 1
        value: list[str] = []
        while not self._at_end():
            char = self._peek()
            self.position += 1
            if char == '"':
                return "".join(value)
            if char == "\\" and not self._at_end():
                char = self._peek()
                self.position += 1
            value.append(char)
        self.position = start
        raise self.error("unterminated quoted string")

    def _skip_spaces(self) -> None:
        while self._next_in(_SPACE):
            self.position += 1

    def _next_in(self, chars: str | frozenset[str]) -> bool:
        return not self._at_end() and self._peek() in chars

    def _peek(self) -> str:
        return self.text[self.position : self.position + 1]

    def _at_end(self) -> bool:
        return self.position >= len(self.text)
