"""The `laminae` package's import structure, read statically (ast over src/laminae/**/*.py,
nothing imported):

- no import cycle among laminae modules, counting the imports at module level (what runs when a
  module is imported) AND those inside functions (lazy imports, which run later but still tie
  the two modules together: a loop through a lazy import is a loop all the same, only hidden).
  The module-level graph is checked on its own first, so that a failure says which kind it is.
  Imports under `if TYPE_CHECKING:` never run and are not counted;
- no module imports a private name (one leading underscore, not a dunder) from another laminae
  module, at module level or inside a function, nor reads one as an attribute of a laminae
  module it imported (`from laminae import provenance; provenance._helper()`): what one module
  needs of another is public.

An edge `a -> b` is drawn for `import b`, `from b import name` and `from p import b` (b a
module of p, then the edge goes to b, not to p), relative imports resolved; the parent
packages that the interpreter imports on the way are not drawn (every module would loop
through its package's __init__ otherwise).
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field
from pathlib import Path

SOURCE = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "laminae"


@dataclass
class Module:
    name: str
    path: Path
    is_package: bool
    module_level: dict[str, int] = field(default_factory=dict)    # imported module -> first line
    function_level: dict[str, int] = field(default_factory=dict)
    private: list[tuple[int, str, str]] = field(default_factory=list)   # (line, module, name)


def _module_name(path: Path) -> tuple[str, bool]:
    parts = list(path.relative_to(SOURCE).with_suffix("").parts)
    if parts[-1] == "__init__":
        return ".".join(parts[:-1]), True
    return ".".join(parts), False


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _walk(node: ast.AST, in_function: bool):
    """(import node, whether inside a function), skipping `if TYPE_CHECKING:` bodies."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.If) and _is_type_checking(child.test):
            for orelse in child.orelse:
                yield from _walk_one(orelse, in_function)
            continue
        yield from _walk_one(child, in_function)


def _walk_one(node: ast.AST, in_function: bool):
    if isinstance(node, (ast.Import, ast.ImportFrom)):
        yield node, in_function
        return
    inner = in_function or isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
    yield from _walk(node, inner)


def import_graph() -> dict[str, Module]:
    modules: dict[str, Module] = {}
    for path in sorted((SOURCE / PACKAGE).rglob("*.py")):
        name, is_package = _module_name(path)
        modules[name] = Module(name, path, is_package)
    for module in modules.values():
        tree = ast.parse(module.path.read_text(encoding="utf-8"), filename=str(module.path))
        package = module.name if module.is_package else module.name.rpartition(".")[0]
        bound: dict[str, str] = {}   # a local name bound to a laminae module (`from laminae import store`)
        for node, in_function in _walk(tree, False):
            edges = module.function_level if in_function else module.module_level
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.asname and alias.name in modules:
                        bound[alias.asname] = alias.name
                    target = alias.name
                    while target and target not in modules:   # `import a.b.c` of a name in a.b
                        target = target.rpartition(".")[0]
                    if target:
                        edges.setdefault(target, node.lineno)
                continue
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            if source.split(".")[0] != PACKAGE:
                continue
            for alias in node.names:
                submodule = f"{source}.{alias.name}"
                if submodule in modules:
                    edges.setdefault(submodule, node.lineno)
                    bound[alias.asname or alias.name] = submodule
                    continue
                if source in modules:
                    edges.setdefault(source, node.lineno)
                if _is_private(alias.name) and source != module.name:
                    module.private.append((node.lineno, source, alias.name))
        for node in ast.walk(tree):   # `store._helper` on a module bound above
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in bound
                    and _is_private(node.attr) and bound[node.value.id] != module.name):
                module.private.append((node.lineno, bound[node.value.id], node.attr))
    return modules


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component of more than one module (or a self-loop),
    as a path a -> b -> ... -> a (Tarjan's algorithm, then a shortest loop through its first node)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    counter = [0]

    def visit(node: str) -> None:
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1 or node in graph.get(node, ()):
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    cycles = []
    for component in components:
        members, start = set(component), component[0]
        previous: dict[str, str] = {}
        frontier, seen = [start], {start}
        loop: list[str] | None = None
        while frontier and loop is None:   # breadth first from start, back to start
            following = []
            for node in frontier:
                for target in sorted(graph.get(node, ())):
                    if target == start:
                        path = [node]
                        while path[-1] != start:
                            path.append(previous[path[-1]])
                        loop = path[::-1] + [start]
                        break
                    if target in members and target not in seen:
                        seen.add(target)
                        previous[target] = node
                        following.append(target)
                if loop is not None:
                    break
            frontier = following
        cycles.append(loop or component)
    return cycles


def _describe(cycles: list[list[str]], modules: dict[str, Module]) -> str:
    lines = []
    for cycle in cycles:
        steps = []
        for a, b in zip(cycle, cycle[1:]):
            where = modules[a]
            if b in where.module_level:
                steps.append(f"    {a} -> {b}  ({where.path.relative_to(SOURCE.parent)}:{where.module_level[b]})")
            else:
                steps.append(f"    {a} -> {b}  ({where.path.relative_to(SOURCE.parent)}:{where.function_level[b]}, "
                             "inside a function)")
        lines.append(" -> ".join(cycle) + "\n" + "\n".join(steps))
    return "\n".join(lines)


def test_the_graph_sees_the_package():
    modules = import_graph()
    assert "laminae.workflow" in modules and "laminae.inputs" in modules and modules["laminae.inputs"].is_package
    assert "laminae.errors" in modules["laminae.inputs.corpus"].module_level
    assert "laminae.inputs.windows" in modules["laminae.inputs.corpus"].function_level   # lazy: numpy
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []
    assert find_cycles({"a": {"a"}}) == [["a", "a"]]


def test_no_import_cycle_at_module_level():
    modules = import_graph()
    graph = {name: set(module.module_level) for name, module in modules.items()}
    cycles = find_cycles(graph)
    assert not cycles, "import cycles among laminae modules (module-level imports):\n" + _describe(cycles, modules)


def test_no_import_cycle_counting_imports_inside_functions():
    modules = import_graph()
    graph = {name: set(module.module_level) | set(module.function_level) for name, module in modules.items()}
    cycles = find_cycles(graph)
    assert not cycles, ("import cycles among laminae modules (module-level and function-level imports; "
                        "a lazy import hides a loop, it does not remove it):\n" + _describe(cycles, modules))


def test_no_private_name_imported_from_another_module():
    found = [f"{module.path.relative_to(SOURCE.parent)}:{line}: {name} of {source}"
             for module in import_graph().values() for line, source, name in module.private]
    assert not found, "private names imported across laminae modules (make them public):\n" + "\n".join(found)
