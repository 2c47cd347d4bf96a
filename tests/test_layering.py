"""The house's layering: no import cycle among sglguard's modules, the domain types depend on
nothing, and the store knows nothing of checks, config or notifications."""

from __future__ import annotations

import ast
from pathlib import Path

import sglguard

ROOT = Path(sglguard.__file__).parent


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def top_level_imports(path: Path, modules: set[str]) -> set[str]:
    """The sglguard modules `path` imports when it is imported (not inside functions, not
    under TYPE_CHECKING)."""
    found: set[str] = set()
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]

    def visit(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.dump(node.test):
                continue
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            if isinstance(node, ast.ClassDef):
                visit(node.body)
            elif isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[:len(package.split(".")) - node.level + 1]
                    base = ".".join([*up, *([node.module] if node.module else [])])
                for alias in node.names:
                    whole = f"{base}.{alias.name}"
                    found.add(whole if whole in modules else base)
            elif isinstance(node, ast.If | ast.Try | ast.With):
                visit(node.body)
                for handler in getattr(node, "handlers", []):
                    visit(handler.body)
                visit(getattr(node, "orelse", []))

    visit(ast.parse(path.read_text()).body)
    return {name for name in found if name in modules and name != module_name(path)}


def import_graph() -> dict[str, set[str]]:
    paths = {module_name(path): path for path in ROOT.rglob("*.py")}
    modules = set(paths)
    return {name: top_level_imports(path, modules) for name, path in paths.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def strong(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for other in graph[node]:
            if other not in index:
                strong(other)
                low[node] = min(low[node], low[other])
            elif other in stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                other = stack.pop()
                component.append(other)
                if other == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in graph:
        if node not in index:
            strong(node)
    return found


def test_no_module_imports_itself_through_others() -> None:
    assert cycles(import_graph()) == []


def test_the_domain_types_depend_on_nothing_of_sglguard() -> None:
    assert import_graph()["sglguard.domain"] == set()


def test_the_store_knows_nothing_of_checks_config_or_notifications() -> None:
    graph = import_graph()
    for name, imports in graph.items():
        if name.startswith("sglguard.store"):
            wrong = {other for other in imports if other.startswith((
                "sglguard.checks", "sglguard.config", "sglguard.notify", "sglguard.engine",
                "sglguard.remediations"))}
            assert not wrong, (name, wrong)


def test_a_cycle_is_found_when_there_is_one() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_the_checks_read_pidfiles_without_the_controls() -> None:
    graph = import_graph()
    for name, imports in graph.items():
        if name.startswith("sglguard.checks"):
            assert not {other for other in imports if other.startswith("sglguard.controls")}, name


def test_the_package_init_files_import_nothing_heavy() -> None:
    import subprocess
    import sys

    probe = ("import sys, sglguard, sglguard.checks, sglguard.store, sglguard.notify, "
             "sglguard.config, sglguard.controls, sglguard.remediations, sglguard.domain; "
             "print(sorted(m for m in ('sqlalchemy', 'requests', 'apprise', 'apscheduler', "
             "'pynvml', 'psutil') if m in sys.modules))")
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                            check=True).stdout.strip()
    assert loaded == "[]"


def test_validate_loads_no_database_library(tmp_path: Path) -> None:
    import subprocess
    import sys
    from importlib import resources

    catalog = tmp_path / "sglguard.yaml"
    catalog.write_text(resources.files("sglguard.config").joinpath("catalog.example.yaml")
                       .read_text())
    probe = ("import sys; from sglguard.cli import main\n"
             "try:\n    main(['validate', '--config', sys.argv[1]])\n"
             "except SystemExit as exc:\n    code = exc.code\n"
             "print('sqlalchemy' in sys.modules, code)")
    said = subprocess.run([sys.executable, "-c", probe, str(catalog)], capture_output=True,
                          text=True, check=True).stdout.strip().splitlines()[-1]
    assert said == "False 0"


def _validate_in_a_fresh_process(catalog: Path) -> tuple[int, list[str]]:
    """Run `sglguard validate` in a new interpreter: its exit status and the modules it
    loaded."""
    import json
    import subprocess
    import sys

    probe = ("import json, sys; from sglguard.cli import main\n"
             "code = 0\n"
             "try:\n    main(['validate', '--config', sys.argv[1]])\n"
             "except SystemExit as exc:\n    code = exc.code\n"
             "print(json.dumps([code, sorted(sys.modules)]))")
    said = subprocess.run([sys.executable, "-c", probe, str(catalog)], capture_output=True,
                          text=True, check=True).stdout.strip().splitlines()[-1]
    code, modules = json.loads(said)
    return code, modules


def test_validate_loads_only_the_kinds_its_catalog_uses(tmp_path: Path) -> None:
    catalog = tmp_path / "sglguard.yaml"
    catalog.write_text("version: 1\n"
                       "targets:\n  - name: local\n    url: http://127.0.0.1:30000\n"
                       "checks:\n  - name: liveness\n    kind: http\n    target: local\n"
                       "    path: /health\n")
    code, modules = _validate_in_a_fresh_process(catalog)
    assert code == 0
    assert "sglguard.checks.http" in modules
    kinds = {module for module in modules if module.startswith((
        "sglguard.checks.", "sglguard.controls.", "sglguard.remediations."))}
    assert kinds - {"sglguard.checks.http"} <= {
        "sglguard.checks.base", "sglguard.checks.registry", "sglguard.controls.base",
        "sglguard.controls.registry", "sglguard.remediations.base",
        "sglguard.remediations.registry"}
    assert not {"sqlalchemy", "pynvml", "psutil", "apscheduler"} & set(modules)


def test_validate_of_the_example_catalog_loads_every_kind_it_uses(tmp_path: Path) -> None:
    from importlib import resources

    catalog = tmp_path / "sglguard.yaml"
    catalog.write_text(resources.files("sglguard.config").joinpath("catalog.example.yaml")
                       .read_text())
    code, modules = _validate_in_a_fresh_process(catalog)
    assert code == 0
    assert {"sglguard.checks.gpu", "sglguard.checks.log", "sglguard.controls.process",
            "sglguard.remediations.restart"} <= set(modules)
    assert "sqlalchemy" not in modules
