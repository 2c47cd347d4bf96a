"""KEY=value files as systemd's EnvironmentFile= reads them (the common subset), so that a
command run by hand sees the variables the service sees."""

from __future__ import annotations

import re
from pathlib import Path

_LINE = re.compile(r"^(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.*)$")


class EnvFileError(Exception):
    """The file cannot be read, or a line is not KEY=value; says which (never the value)."""


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        inner = value[1:-1]
        return re.sub(r"\\(.)", r"\1", inner) if value[0] == '"' else inner
    return value


def read_env_file(path: Path) -> dict[str, str]:
    """The variables of `path`: blank lines and lines starting with # or ; are skipped, a value
    may be quoted with ' or \"."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise EnvFileError(f"cannot read {path}: {exc.strerror or exc}") from None
    variables: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith(("#", ";")):
            continue
        match = _LINE.match(stripped)
        if match is None:
            raise EnvFileError(f"{path} line {number}: expected KEY=value")
        variables[match.group(1)] = _unquote(match.group(2).strip())
    return variables
