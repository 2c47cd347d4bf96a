"""Cross-references in a catalog: names that must exist, names that must be unique."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from sglguard.controls.registry import CONTROLS
from sglguard.remediations.registry import REMEDIATIONS

if TYPE_CHECKING:
    from sglguard.config.models import Catalog

Loc = tuple[str | int, ...]


def _items(data: dict[str, Any], section: str) -> Iterator[tuple[int, dict[str, Any]]]:
    items = data.get(section)
    if isinstance(items, list):
        for index, item in enumerate(items):
            if isinstance(item, dict):
                yield index, item


def _names(data: dict[str, Any], section: str) -> dict[str, int]:
    names: dict[str, int] = {}
    for index, item in _items(data, section):
        name = item.get("name")
        if isinstance(name, str):
            names.setdefault(name, index)
    return names


def _unique(data: dict[str, Any], section: str) -> Iterator[tuple[Loc, str]]:
    first: dict[str, int] = {}
    for index, item in _items(data, section):
        name = item.get("name")
        if not isinstance(name, str):
            continue
        if name in first:
            yield (section, index, "name"), (
                f"duplicate name '{name}' (also {section}[{first[name]}])"
            )
        first.setdefault(name, index)


def _known(kind: str, names: dict[str, int]) -> str:
    return ", ".join(sorted(names)) or f"none: the catalog has no {kind}"


def reference_problems(data: dict[str, Any]) -> list[tuple[Loc, str]]:
    """Every dangling or duplicated name, with where it is."""
    problems: list[tuple[Loc, str]] = []
    for section in ("targets", "checks", "remediations", "notifiers", "maintenance"):
        problems += _unique(data, section)
    targets = _names(data, "targets")
    remediations = _names(data, "remediations")
    controlled = {
        item["name"] for _, item in _items(data, "targets") if item.get("control") is not None
    }
    control_kinds = {item.get("name"): item["control"].get("kind") for _, item in
                     _items(data, "targets") if isinstance(item.get("control"), dict)}
    remediation_kinds = {
        item.get("name"): item.get("kind") for _, item in _items(data, "remediations")
    }
    checks = _names(data, "checks")
    problems += _gateway_problems(data)
    problems += _dump_target_problems(data, targets)
    problems += _dependency_problems(data, checks)
    problems += _window_problems(data, targets, checks)
    for index, check in _items(data, "checks"):
        target = check.get("target")
        if isinstance(target, str) and target not in targets:
            problems.append(((("checks", index, "target")), (
                f"unknown target '{target}' (known: {_known('targets', targets)})")))
        remediate = check.get("remediate")
        for position, name in enumerate(remediate if isinstance(remediate, list) else []):
            loc: Loc = ("checks", index, "remediate", position)
            if name not in remediations:
                problems.append((loc, (
                    f"unknown remediation '{name}' (known: {_known('remediations', remediations)})"
                )))
                continue
            kind = remediation_kinds.get(name)
            needs_control = (isinstance(kind, str) and kind in REMEDIATIONS
                             and REMEDIATIONS[kind].requires_control)
            if needs_control and isinstance(target, str) and target in targets and (
                target not in controlled
            ):
                problems.append((loc, (
                    f"remediation '{name}' ({kind}) needs a `control:` on target '{target}'"
                )))
            elif isinstance(kind, str) and isinstance(target, str):
                problems += _flag_problems(loc, name, kind, control_kinds.get(target), target)
    return problems


def _dump_target_problems(data: dict[str, Any],
                          targets: dict[str, int]) -> list[tuple[Loc, str]]:
    diagnostics = data.get("diagnostics")
    dumps = diagnostics.get("request_dumps") if isinstance(diagnostics, dict) else None
    named = dumps.get("targets") if isinstance(dumps, dict) else None
    return [(("diagnostics", "request_dumps", "targets", index),
             f"unknown target '{name}' (known: {_known('targets', targets)})")
            for index, name in enumerate(named if isinstance(named, list) else [])
            if isinstance(name, str) and name not in targets]


def _flag_problems(loc: Loc, name: str, kind: str, control: Any,
                   target: str) -> list[tuple[Loc, str]]:
    """A remediation that restarts with changed launch flags needs a control that can."""
    if kind not in REMEDIATIONS or not REMEDIATIONS[kind].changes_launch_flags:
        return []
    if not isinstance(control, str) or control not in CONTROLS:
        return []
    if CONTROLS[control].supports_overrides:
        return []
    able = ", ".join(sorted(k for k in CONTROLS if CONTROLS[k].supports_overrides))
    return [(loc, f"remediation '{name}' ({kind}) cannot change launch flags through the "
                  f"{control} control of target '{target}' (controls that can: {able})")]


# Check kinds that read what only an SGLang server has, never a gateway in front of servers.
_SERVER_ONLY = {
    "server_info": "a gateway has no server info of its own (its /server_info would be one "
                   "worker's): aim this check at a worker's target",
    "progress": "a gateway runs no decode steps of its own: aim this check at a worker's target",
}


def _gateway_problems(data: dict[str, Any]) -> list[tuple[Loc, str]]:
    """Checks aimed at a `role: gateway` target that could only report a worker's figures or
    fail for a reason that has nothing to do with the gateway."""
    gateways = {item.get("name"): item for _, item in _items(data, "targets")
                if item.get("role") == "gateway"}
    problems: list[tuple[Loc, str]] = []
    for index, check in _items(data, "checks"):
        target, kind = gateways.get(check.get("target")), check.get("kind")
        if target is None:
            continue
        name = check.get("target")
        if isinstance(kind, str) and kind in _SERVER_ONLY:
            problems.append((("checks", index, "kind"),
                             f"target '{name}' is a gateway: {_SERVER_ONLY[kind]}"))
        elif kind == "metric" and target.get("metrics_url") is None:
            problems.append((("checks", index, "target"), (
                f"target '{name}' is a gateway, whose metrics are on its own port "
                "(--prometheus-port, default 29000): give the target a metrics_url")))
    return problems


def _dependency_problems(data: dict[str, Any], checks: dict[str, int]) -> list[tuple[Loc, str]]:
    """Unknown names in `depends_on`, and cycles (which would skip each other forever)."""
    problems: list[tuple[Loc, str]] = []
    edges: dict[str, list[str]] = {}
    for index, check in _items(data, "checks"):
        needs = check.get("depends_on")
        needs = [needs] if isinstance(needs, str) else needs if isinstance(needs, list) else []
        for position, name in enumerate(needs):
            if name not in checks:
                problems.append((("checks", index, "depends_on", position),
                                 f"unknown check '{name}' (known: {_known('checks', checks)})"))
        if isinstance(check.get("name"), str):
            edges[check["name"]] = [name for name in needs if name in checks]
    for name, index in checks.items():
        if _reaches(edges, name, name, set()):
            problems.append((("checks", index, "depends_on"),
                             f"depends_on makes a cycle through '{name}'"))
    return problems


def _reaches(edges: dict[str, list[str]], start: str, goal: str, seen: set[str]) -> bool:
    for nxt in edges.get(start, []):
        if nxt == goal:
            return True
        if nxt not in seen:
            seen.add(nxt)
            if _reaches(edges, nxt, goal, seen):
                return True
    return False


def _window_problems(data: dict[str, Any], targets: dict[str, int],
                     checks: dict[str, int]) -> list[tuple[Loc, str]]:
    problems: list[tuple[Loc, str]] = []
    for index, window in _items(data, "maintenance"):
        for field, known, kind in (("targets", targets, "targets"), ("checks", checks, "checks")):
            names = window.get(field)
            for position, name in enumerate(names if isinstance(names, list) else []):
                if name not in known:
                    problems.append((("maintenance", index, field, position),
                                     f"unknown {kind[:-1]} '{name}' (known: "
                                     f"{_known(kind, known)})"))
    return problems


def log_problems(catalog: Catalog) -> list[tuple[Loc, str]]:
    """A `log` check without `path` reads its target control's log: the control must keep one."""
    if not any(check.kind == "log" for check in catalog.checks):
        return []  # the log kind's module is not loaded for nothing
    from sglguard.checks.log import LogCheckConfig

    targets = {target.name: target for target in catalog.targets}
    problems: list[tuple[Loc, str]] = []
    for index, check in enumerate(catalog.checks):
        if not isinstance(check, LogCheckConfig) or check.path is not None:
            continue
        target = targets.get(check.target)
        control = target.control if target is not None else None
        if control is not None and control.server_log is not None:
            continue
        why = (f"the {control.kind} control of target '{check.target}' keeps no log file"
               if control is not None else f"target '{check.target}' has no control")
        problems.append((("checks", index), (
            f"a log check without `path` reads the log its target's control writes, but {why}: "
            "give `path:` (the file the server writes to)")))
    return problems
