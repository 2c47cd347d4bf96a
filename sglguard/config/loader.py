"""Load a catalog file: YAML with line numbers, ${VAR} substitution, complete validation."""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from sglguard.config.models import Catalog, StoreConfig
from sglguard.config.references import log_problems, reference_problems
from sglguard.redact import remember_catalog

Loc = tuple[str | int, ...]
DEFAULT_PATHS = (Path("sglguard.yaml"), Path("/etc/sglguard/sglguard.yaml"))
# A catalog is a few kilobytes; these bound what a hostile or broken file may cost at load
# (and at every SIGHUP): its size, and its YAML graph with every alias expanded.
MAX_CATALOG_BYTES = 1024 * 1024
MAX_EXPANDED_NODES = 100_000
_VARIABLE = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class ConfigError(Exception):
    """A catalog that cannot be used, with every problem found in it."""

    def __init__(self, source: str, problems: Sequence[str]) -> None:
        self.source = source
        self.problems = list(problems)
        count = len(self.problems)
        heading = f"invalid catalog {source}: {count} problem{'s' if count != 1 else ''}"
        super().__init__("\n".join([heading, *(f"  - {item}" for item in self.problems)]))


def format_loc(loc: Iterable[str | int]) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(top level)"


def find_catalog(explicit: str | os.PathLike[str] | None) -> Path:
    """The catalog to use: the one given, else ./sglguard.yaml, else /etc/sglguard/sglguard.yaml."""
    if explicit is not None:
        path = Path(explicit)
        if not path.is_file():
            raise ConfigError(str(path), ["file not found"])
        return path
    for candidate in DEFAULT_PATHS:
        if candidate.is_file():
            return candidate
    tried = " or ".join(str(path) for path in DEFAULT_PATHS)
    raise ConfigError(tried, ["no catalog found: write one with `sglguard init` (or `sglguard "
                              "init --system` for a service on this host), or pass --config PATH"])


class _Document:
    """Parsed YAML plus the line each path starts on."""

    def __init__(self, text: str) -> None:
        loader = yaml.SafeLoader(text)
        try:
            node = loader.get_single_node()
            if node is not None:
                _bounded_graph(node)
            self.data: Any = loader.construct_document(node) if node is not None else None
        finally:
            loader.dispose()
        self.lines: dict[Loc, int] = {}
        self.duplicates: list[tuple[Loc, int]] = []
        if node is not None:
            self._index(node, ())

    def _index(self, node: yaml.Node, loc: Loc) -> None:
        self.lines.setdefault(loc, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            seen: set[Any] = set()
            for key_node, value_node in node.value:
                key = key_node.value
                if key in seen:
                    self.duplicates.append(((*loc, key), key_node.start_mark.line + 1))
                seen.add(key)
                self.lines[(*loc, key)] = key_node.start_mark.line + 1
                self._index(value_node, (*loc, key))
        elif isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                self._index(item, (*loc, index))

    def where(self, loc: Loc) -> tuple[str, int | None]:
        """The path and the line it starts on (a missing key: the line of its parent)."""
        node: Any = self.data
        kept: list[str | int] = []
        for part in loc:
            kept.append(part)
            found = (isinstance(node, dict) and part in node) or (
                isinstance(node, list) and isinstance(part, int) and part < len(node))
            if not found:
                break
            node = node[part]
        line = None
        for size in range(len(kept), -1, -1):
            line = self.lines.get(tuple(kept[:size]))
            if line is not None:
                break
        return format_loc(kept), line


def _bounded_graph(root: yaml.Node) -> None:
    """Refuse a document whose aliases expand past MAX_EXPANDED_NODES (a "billion laughs"
    of a few hundred bytes); each node is sized once, so this costs the unexpanded size."""
    sizes: dict[int, int] = {}
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        if id(node) in sizes:
            continue
        children = _children(node)
        if done:
            sizes[id(node)] = min(1 + sum(sizes.get(id(child), 0) for child in children),
                                  MAX_EXPANDED_NODES + 1)
            continue
        stack.append((node, True))
        stack.extend((child, False) for child in children if id(child) not in sizes)
    if sizes[id(root)] > MAX_EXPANDED_NODES:
        raise yaml.YAMLError(f"its aliases expand to more than {MAX_EXPANDED_NODES} values: "
                             "refused")


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def _substitute(value: Any, loc: Loc, problems: list[tuple[Loc, str]]) -> Any:
    if isinstance(value, dict):
        return {key: _substitute(item, (*loc, key), problems) for key, item in value.items()}
    if isinstance(value, list):
        return [_substitute(item, (*loc, index), problems) for index, item in enumerate(value)]
    if not isinstance(value, str) or "$" not in value:
        return value

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name, default = match.group(1), match.group(2)
        found = os.environ.get(name)
        if found is not None:
            return found
        if default is not None:
            return default
        problems.append((loc, f"environment variable {name} is not set "
                               f"(write ${{{name}:-default}} to give a default)"))
        return ""

    return _VARIABLE.sub(replace, value)


def _resolve_store_url(url: str, base_dir: Path) -> str:
    prefix = "sqlite:///"
    if url.startswith(prefix) and not url.startswith(prefix + "/"):
        rest = url[len(prefix):]
        if rest and not rest.startswith(":memory:") and not rest.startswith("file:"):
            return prefix + str((base_dir / rest).resolve())
    return url


def load_catalog(path: str | os.PathLike[str]) -> Catalog:
    """Read and validate a catalog file; raises ConfigError listing every problem."""
    source = Path(path)
    try:
        with source.open("rb") as handle:
            mode = os.fstat(handle.fileno()).st_mode
            if mode & stat.S_IWOTH:
                raise ConfigError(str(source), [
                    "the file is writable by every user: refused, since it says what sglguard "
                    "runs and signals (chmod o-w it)"])
            raw = handle.read(MAX_CATALOG_BYTES + 1)
    except OSError as exc:
        raise ConfigError(str(source), [f"cannot read: {exc.strerror or exc}"]) from None
    if len(raw) > MAX_CATALOG_BYTES:
        raise ConfigError(str(source), [f"larger than {MAX_CATALOG_BYTES // 1024} KiB: refused"])
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(str(source), [f"not UTF-8 text: {exc.reason}"]) from None
    return parse_catalog(text, source)


def parse_catalog(text: str, source: Path) -> Catalog:
    """Validate catalog text; relative paths are taken from `source`'s folder."""
    name = str(source)
    try:
        document = _Document(text)
    except yaml.YAMLError as exc:
        raise ConfigError(name, [yaml_problem(exc)]) from None
    if not isinstance(document.data, dict):
        raise ConfigError(name, ["the catalog must be a mapping with `version: 1` at the top"])

    found: list[tuple[Loc, str]] = [
        (loc, f"duplicate key (line {line}); each key may appear once")
        for loc, line in document.duplicates
    ]
    data = _substitute(document.data, (), found)
    base_dir = source.resolve().parent
    default_url = StoreConfig.model_fields["url"].default
    if "store" not in data:
        data["store"] = {"url": _resolve_store_url(default_url, base_dir)}
    elif isinstance(data["store"], dict):  # the default database also sits by the catalog
        url = data["store"].get("url", default_url)
        if isinstance(url, str):
            data["store"]["url"] = _resolve_store_url(url, base_dir)

    catalog: Catalog | None = None
    try:
        catalog = Catalog.model_validate(data, context={"base_dir": base_dir})
    except ValidationError as exc:
        errors = exc.errors()
        found += [
            (tuple(error["loc"]), _message(error)) for error in errors
            if not _is_consequence(error, errors)
        ]
    found += reference_problems(data)
    if catalog is not None and not found:
        found += log_problems(catalog)
    if found or catalog is None:
        raise ConfigError(name, _render(document, found))
    remember_catalog(catalog)
    return catalog


def _at(mark: Any) -> str:
    return f"line {mark.line + 1}, column {mark.column + 1}"


def yaml_problem(exc: yaml.YAMLError) -> str:
    """PyYAML's error in words, led by the line where the mistake is: for an unclosed quote or
    bracket, where it opens (PyYAML's context mark), not the end of the file where it noticed."""
    problem_mark = getattr(exc, "problem_mark", None)
    context_mark = getattr(exc, "context_mark", None)
    problem = str(getattr(exc, "problem", None) or exc)
    context = str(getattr(exc, "context", None) or "")
    found = f"{problem} at {_at(problem_mark)}" if problem_mark is not None else problem
    if context_mark is not None and "quoted scalar" in context:
        return (f"line {context_mark.line + 1}: not valid YAML: a quoted value opens at "
                f"{_at(context_mark)} and is never closed ({found})")
    if context_mark is not None and "flow" in context:
        bracket = "[" if "sequence" in context else "{"
        return (f"line {context_mark.line + 1}: not valid YAML: the {bracket} opened at "
                f"{_at(context_mark)} is not closed where expected ({found})")
    if problem_mark is None:
        return f"not valid YAML: {problem}"
    if "'\\t'" in problem:
        words = "a tab character; YAML indents with spaces only"
    elif problem.startswith("mapping values are not allowed"):
        words = "': ' inside a plain value; quote the value (e.g. 'a: b')"
    elif problem.startswith("expected <block end>") and context_mark is not None:
        words = (f"this line is not indented like the block it belongs to, which starts at "
                 f"{_at(context_mark)}")
        context = ""
    else:
        words = problem
    where = f" ({context} at {_at(context_mark)})" if context and context_mark is not None else ""
    return (f"line {problem_mark.line + 1}: not valid YAML (column {problem_mark.column + 1}): "
            f"{words}{where}")


def _is_consequence(error: Any, errors: list[Any]) -> bool:
    """A `too_short` list whose items failed is reported through those items."""
    loc = tuple(error["loc"])
    return error["type"] == "too_short" and any(
        len(other["loc"]) > len(loc) and tuple(other["loc"][: len(loc)]) == loc
        for other in errors
    )


def _message(error: Any) -> str:
    if tuple(error["loc"]) == ("version",):
        if error["type"] == "missing":
            return ("the catalog has no `version:`; write `version: 1` at its top (the catalog "
                    "format this sglguard reads)")
        return (f"version {error.get('input')!r} is not a catalog format this sglguard reads: "
                "write `version: 1`")
    message = str(error["msg"])
    for prefix in ("Value error, ", "Assertion failed, "):
        message = message.removeprefix(prefix)
    return message


def _render(document: _Document, found: list[tuple[Loc, str]]) -> list[str]:
    rendered: list[tuple[int, str]] = []
    seen: set[str] = set()
    for loc, message in found:
        path, line = document.where(loc)
        text = f"{path} (line {line}): {message}" if line else f"{path}: {message}"
        if text not in seen:
            seen.add(text)
            rendered.append((line or 0, text))
    return [text for _, text in sorted(rendered, key=lambda item: item[0])]
