"""Import directions (DESIGN.md §3, docs/architecture.md): ai_core knows nothing
of daemon, dicom_out or lab; dicom_out knows nothing of daemon or lab; lab
(research tooling) never imports daemon or dicom_out, and daemon reaches it only
from inside its research CLI commands; daemon and dicom_out use only ai_core's
public face (``ai_core.__all__``); inside daemon each stage imports only the
stages before it; no import circle anywhere (function-local imports included);
the listener side never imports torch (a GPU crash must not stop intake) and
the serving process never loads lab."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


# Package -> the packages it must never import (docs/architecture.md, "Packages").
PACKAGE_RULES = {
    "ai_core": ("daemon", "dicom_out", "lab"),
    "dicom_out": ("daemon", "lab"),
    "lab": ("daemon", "dicom_out"),
}


def _import_nodes(path: Path) -> Iterator[tuple[ast.Import | ast.ImportFrom, bool]]:
    """Every absolute import statement of the file, and whether it sits inside a function."""

    def visit(node: ast.AST, local: bool) -> Iterator[tuple[ast.Import | ast.ImportFrom, bool]]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import) or (
                isinstance(child, ast.ImportFrom) and child.module and child.level == 0
            ):
                yield child, local
            inner = local or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef)
            yield from visit(child, inner)

    yield from visit(ast.parse(path.read_text(encoding="utf-8")), False)


def _imports(package: str) -> list[tuple[Path, str]]:
    found = []
    for path in sorted((REPO / package).rglob("*.py")):
        for node, _local in _import_nodes(path):
            if isinstance(node, ast.Import):
                found += [(path, alias.name) for alias in node.names]
            else:
                found.append((path, str(node.module)))
    return found


@pytest.mark.parametrize(("package", "forbidden"), sorted(PACKAGE_RULES.items()), ids=str)
def test_import_directions(package: str, forbidden: tuple[str, ...]) -> None:
    bad = [
        f"{path.relative_to(REPO)} imports {name}"
        for path, name in _imports(package)
        if name.split(".")[0] in forbidden
    ]
    assert bad == []


def test_daemon_reaches_lab_only_inside_its_cli_commands() -> None:
    """``ki67node synth/train/evaluate/growth-analysis`` import lab in the command function."""
    bad = []
    for path in sorted((REPO / "daemon").rglob("*.py")):
        in_cli = path.parent == REPO / "daemon" / "cli"
        for node, local in _import_nodes(path):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module]
            if any(str(n).split(".")[0] == "lab" for n in names) and not (in_cli and local):
                bad.append(f"{path.relative_to(REPO)}:{node.lineno} imports lab")
    assert bad == []


# -- ai_core's public face ----------------------------------------------------------------
def _public(dotted: str) -> list[str]:
    """The ``__all__`` of an ai_core package (a cheap import: no submodule is loaded)."""
    names = importlib.import_module(dotted).__all__
    assert isinstance(names, list)
    return names


def _is_package(dotted: str) -> bool:
    return (REPO.joinpath(*dotted.split(".")) / "__init__.py").is_file()


def _ai_core_refusal(parts: list[str]) -> str | None:
    """Why ``ai_core.<parts>`` is not public, or None when it is.

    ``parts[0]`` must be in ``ai_core.__all__``; when it is a package, the next
    name (a submodule, or a name imported from the package) must be in that
    package's ``__all__``; no name may be private (leading underscore).
    """
    if any(part.startswith("_") for part in parts):
        return "a private name"
    if not parts:
        return "import a public module of ai_core, not the package"
    if parts[0] not in _public("ai_core"):
        return "not in ai_core.__all__"
    package = f"ai_core.{parts[0]}"
    if _is_package(package) and len(parts) > 1 and parts[1] not in _public(package):
        return f"not in {package}.__all__"
    return None


def _ai_core_uses(package: str) -> Iterator[tuple[Path, int, list[str]]]:
    """(file, line, the dotted name after ``ai_core.``) of every use of ai_core in ``package``.

    ``from ai_core.a.b import c`` is the name ``a.b.c``; ``import ai_core.a.b`` is ``a.b``.
    """
    for path in sorted((REPO / package).rglob("*.py")):
        for node, _local in _import_nodes(path):
            if isinstance(node, ast.Import):
                dotted = [a.name.split(".") for a in node.names]
                yield from ((path, node.lineno, d[1:]) for d in dotted if d[0] == "ai_core")
            elif str(node.module).split(".")[0] == "ai_core":
                module = str(node.module).split(".")[1:]
                yield from ((path, node.lineno, [*module, a.name]) for a in node.names)


def test_public_face_names_exist() -> None:
    for package in ("ai_core", "ai_core.model", "ai_core.segmentation"):
        module = importlib.import_module(package)
        for name in _public(package):
            submodule = REPO.joinpath(*package.split("."), name)
            assert (
                hasattr(module, name)
                or submodule.with_suffix(".py").is_file()
                or (submodule / "__init__.py").is_file()
            ), f"{package}.__all__ names {name}, which does not exist"


def test_public_face_rule_refuses_the_internals() -> None:
    assert _ai_core_refusal(["volume"]) is None
    assert _ai_core_refusal(["model", "predict"]) is None
    assert _ai_core_refusal(["segmentation", "make_backend"]) is None
    assert _ai_core_refusal(["preprocess"]) == "not in ai_core.__all__"
    assert _ai_core_refusal(["model", "network"]) == "not in ai_core.model.__all__"
    assert _ai_core_refusal(["segmentation", "unet"]) == "not in ai_core.segmentation.__all__"
    assert _ai_core_refusal(["volume", "_private"]) == "a private name"
    assert _ai_core_refusal(["model", "predict", "Prediction"]) is None
    assert _ai_core_refusal(["model", "network", "CascadedMixingTransformer"]) is not None


@pytest.mark.parametrize("package", ["daemon", "dicom_out"])
def test_daemon_and_dicom_out_use_only_ai_cores_public_face(package: str) -> None:
    bad = [
        f"{path.relative_to(REPO)}:{line} imports ai_core.{'.'.join(parts)}: {why}"
        for path, line, parts in _ai_core_uses(package)
        if (why := _ai_core_refusal(parts))
    ]
    assert bad == []


# -- the module graph ---------------------------------------------------------------------
def _modules(*packages: str) -> dict[str, Path]:
    """Dotted name -> file, migrations excluded (Alembic loads them by path)."""
    out = {}
    for package in packages:
        for path in sorted((REPO / package).rglob("*.py")):
            parts = path.relative_to(REPO).with_suffix("").parts
            if "migrations" in parts:
                continue
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            out[name] = path
    return out


def _imported_names(name: str, path: Path) -> Iterator[str]:
    """Every module name the file imports, anywhere in it (relative imports resolved)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            yield base
            yield from (f"{base}.{alias.name}" for alias in node.names)


def _graph(*packages: str) -> dict[str, set[str]]:
    """Module -> the modules of ``packages`` it imports (a name's longest known prefix)."""
    modules = _modules(*packages)
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        edges = set()
        for target in _imported_names(name, path):
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name:
                edges.add(target)
        graph[name] = edges
    return graph


def _circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_the_circle_finder_finds_a_circle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _circles(graph) == [["a", "b", "c"]]


def test_no_import_circle_anywhere() -> None:
    circles = _circles(_graph("ai_core", "dicom_out", "daemon", "lab"))
    assert circles == [], "import circles: " + "; ".join(" <-> ".join(c) for c in circles)


# The stages of daemon/ (docs/architecture.md) and what each must never import
# (names under daemon.). dicom/ and intake/ may use ops.metrics (the process
# counters) and nothing else of ops/; only serve and the CLI see every stage.
_NOT_OPS = "ops.status ops.http ops.notify"
# sources/ (the archive clients) may use the header keywords and the named DIMSE
# statuses, nothing else of intake/ or dicom/, and nothing later.
_NOT_SOURCES = "intake.ingest intake.spool intake.series_filter intake.decisions intake.reanalysis"
STAGE_RULES = {
    "db": "dicom intake sources jobs delivery followup ops cli serve",
    "dicom": f"db intake sources jobs delivery followup {_NOT_OPS} cli serve",
    "sources": f"db dicom.listener dicom.association dicom.storage {_NOT_SOURCES} "
    "jobs delivery followup ops cli serve",
    "intake": f"jobs delivery followup {_NOT_OPS} cli serve",
    "jobs": "dicom.listener dicom.association ops cli serve",
    "delivery": "dicom intake sources jobs followup ops cli serve",
    "followup": "dicom jobs delivery ops cli serve",
    "ops": "dicom intake jobs delivery cli serve",
}


def _within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


@pytest.mark.parametrize("stage", sorted(STAGE_RULES))
def test_stage_import_directions(stage: str) -> None:
    forbidden = [f"daemon.{name}" for name in STAGE_RULES[stage].split()]
    bad = [
        f"{module} imports {target}"
        for module, targets in sorted(_graph("daemon").items())
        if _within(module, f"daemon.{stage}")
        for target in sorted(targets)
        if any(_within(target, f) for f in forbidden)
    ]
    assert bad == []


# -- settings: only the composition root reads the whole Settings ------------------------------
# Every component takes the section(s) it uses (``NodeSettings``, ``DeliverySettings``,
# ``JobSettings``, ``DatabaseTarget``...), never the whole ``Settings``.
# The modules that may take a parameter annotated ``Settings``: the settings module itself,
# ``serve`` (wires the running node) and the CLI modules whose commands load the
# configuration.
COMPOSITION_ROOTS = (
    "daemon.settings",
    "daemon.serve",
    "daemon.cli.app",
    "daemon.cli.common",
    "daemon.cli.echo",
    "daemon.cli.followups",
    "daemon.cli.results",
)


def _names_settings(annotation: ast.expr | None) -> bool:
    """Whether the annotation names ``Settings`` (``X | None``, quoted, dotted included)."""
    if isinstance(annotation, ast.Constant) and isinstance(annotation.value, str):
        annotation = ast.parse(annotation.value, mode="eval").body
    return annotation is not None and any(
        (isinstance(n, ast.Name) and n.id == "Settings")
        or (isinstance(n, ast.Attribute) and n.attr == "Settings")
        for n in ast.walk(annotation)
    )


def _takes_whole_settings(tree: ast.AST) -> Iterator[tuple[int, str]]:
    """(line, what) for each parameter or dataclass field annotated ``Settings`` (a union,
    a string or ``daemon.settings.Settings`` included), and for each parameter named
    ``settings`` whose annotation hides the type (none, ``Any``, ``object``)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            a = node.args
            name = getattr(node, "name", "<lambda>")
            for arg in [*a.posonlyargs, *a.args, *a.kwonlyargs, a.vararg, a.kwarg]:
                if arg is None:
                    continue
                text = "" if arg.annotation is None else ast.unparse(arg.annotation).strip("'\"")
                if _names_settings(arg.annotation) or (
                    arg.arg == "settings" and text in ("", "Any", "object")
                ):
                    yield node.lineno, f"{name}({arg.arg}: {text or '?'})"
        elif isinstance(node, ast.ClassDef):
            for item in node.body:
                if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
                    if _names_settings(item.annotation):
                        text = ast.unparse(item.annotation).strip("'\"")
                        yield item.lineno, f"{node.name}.{item.target.id}: {text}"


def test_the_settings_finder_finds_whole_settings() -> None:
    code = (
        "def a(s: Settings): ...\n"
        "def b(x, *, cfg: 'daemon.settings.Settings | None' = None): ...\n"
        "def c(settings: Any): ...\n"
        "def d(settings): ...\n"
        "class E:\n    settings: Settings\n"
        "def ok(node: NodeSettings, job: JobSettings, cfg: DeliverySettings): ...\n"
    )
    found = [what for _, what in _takes_whole_settings(ast.parse(code))]
    assert found == [
        "a(s: Settings)",
        "b(cfg: daemon.settings.Settings | None)",
        "c(settings: Any)",
        "d(settings: ?)",
        "E.settings: Settings",
    ]


def test_composition_roots_exist() -> None:
    modules = _modules("daemon")
    assert [name for name in COMPOSITION_ROOTS if name not in modules] == []


def test_only_the_composition_root_takes_the_whole_settings() -> None:
    bad = [
        f"{path.relative_to(REPO)}:{line} {what}"
        for name, path in sorted(_modules("daemon", "dicom_out", "ai_core").items())
        if name not in COMPOSITION_ROOTS
        for line, what in _takes_whole_settings(ast.parse(path.read_text(encoding="utf-8")))
    ]
    assert bad == [], "take the section(s) the component uses, not the whole Settings"


def test_serving_process_does_not_import_torch() -> None:
    stages = ("dicom", "intake", "delivery", "followup", "ops")
    names = sorted(n for n in _modules("daemon") if any(_within(n, f"daemon.{s}") for s in stages))
    code = (
        f"import sys, daemon.serve, daemon.cli, {', '.join(names)};"
        "print(sorted(m for m in ('torch', 'monai') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_serving_process_does_not_load_lab() -> None:
    """Every daemon module (``ki67node serve``, its workers, the CLI) and the parser: no lab."""
    names = sorted(n for n in _modules("daemon") if not n.endswith(".__main__"))
    code = (
        f"import sys, {', '.join(names)};"
        "daemon.cli.build_parser();"
        "print(sorted(m for m in sys.modules if m == 'lab' or m.startswith('lab.')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
