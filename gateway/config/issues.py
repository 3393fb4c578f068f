"""Problems in the configuration (or a file it names), with file, line and key path:
ConfigIssue, ConfigError, the line of each key in TOML text, and TOML syntax errors as
ConfigError. The reader (reader.py) and the EAP users file (gateway/eap_secrets.py)
report through them."""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from typing import Any

from gateway.errors import GatewayError

# --------------------------------------------------------------------------- errors


@dataclass(frozen=True, slots=True)
class ConfigIssue:
    """One problem: where (key path, line if known) and what."""

    path: str
    message: str
    line: int | None = None

    def format(self, source: str) -> str:
        where = f"{source}:{self.line}" if self.line is not None else source
        return f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"


class ConfigError(GatewayError):
    """The configuration is unusable; `issues` lists every problem found, in file order."""

    def __init__(self, source: str, issues: list[ConfigIssue]) -> None:
        self.source = source
        self.issues = tuple(issues)
        lines = [issue.format(source) for issue in self.issues]
        count = len(lines)
        head = f"{count} error{'s' if count != 1 else ''} in configuration"
        super().__init__(head + ":\n  " + "\n  ".join(lines))


# --------------------------------------------------------------------------- line numbers


def _split_dotted(text: str) -> list[str]:
    """Split a TOML dotted key (`a."b.c".d`) into its parts."""
    parts: list[str] = []
    for match in re.finditer(r'\s*("(?:[^"\\]|\\.)*"|\'[^\']*\'|[A-Za-z0-9_-]+)\s*(?:\.|$)', text):
        part = match.group(1)
        parts.append(part[1:-1] if part[:1] in "\"'" else part)
    return parts


_HEADER_RE = re.compile(r"^\s*\[\[?\s*([^\]]+?)\s*\]\]?\s*(?:#.*)?$")
_KEY_RE = re.compile(r'^\s*((?:"[^"]*"|\'[^\']*\'|[A-Za-z0-9_.\-\s])+?)\s*=')
_INLINE_KEY_RE = re.compile(r"[{,]\s*([A-Za-z0-9_-]+)\s*=")


def key_lines(text: str) -> dict[tuple[str, ...], int]:
    """Map key paths to the line that defines them (best effort, TOML already parsed)."""
    lines: dict[tuple[str, ...], int] = {}
    table: tuple[str, ...] = ()
    in_multiline = False
    for number, line in enumerate(text.splitlines(), start=1):
        if in_multiline:
            if line.count('"""') % 2 == 1 or line.count("'''") % 2 == 1:
                in_multiline = False
            continue
        header = _HEADER_RE.match(line)
        if header:
            table = tuple(_split_dotted(header.group(1)))
            lines.setdefault(table, number)
            continue
        key = _KEY_RE.match(line)
        if not key:
            continue
        path = table + tuple(_split_dotted(key.group(1)))
        lines.setdefault(path, number)
        rest = line[key.end() :]
        if rest.count('"""') % 2 == 1 or rest.count("'''") % 2 == 1:
            in_multiline = True
        if rest.lstrip().startswith("{"):
            for inner in _INLINE_KEY_RE.finditer(rest):
                lines.setdefault(path + (inner.group(1),), number)
    return lines


def toml_table(text: str, source: str) -> dict[str, Any]:
    """TOML text as a table; a syntax error is a ConfigError with its line."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        match = re.search(r"\(at line (\d+), column (\d+)\)", str(exc))
        message = re.sub(r"\s*\(at (line \d+, column \d+|end of document)\)", "", str(exc))
        line = int(match.group(1)) if match else None
        if "(at end of document)" in str(exc):
            line = max(1, len(text.splitlines()))
        raise ConfigError(source, [ConfigIssue("", f"TOML syntax: {message}", line)]) from None
