"""Print the import graph of `softprompt_ext` and check its rules: no cycles, no imports back up the layers.

    python scripts/import_graph.py            # prints every module's package-internal imports, then checks
    python scripts/import_graph.py --quiet    # checks only; exit 1 on a violation

Every import counts -- module level and inside functions. Imports under `if TYPE_CHECKING:` never run, so
they count for the cycle check only (a cycle that only a type checker sees still ties two modules together).
The rules (CONTRIBUTING.md, "Layout"):

1. No import cycles between modules.
2. The core (the modules at the top of the package) and `adapters/` import nothing from `training/`,
   `tasks/`, `inference/` or `analysis/`; only the two faces, `__init__.py` and `cli.py`, may.
3. The workflow subpackages -- `training/`, `tasks/`, `inference/`, `analysis/` -- import only the core,
   `adapters/` and themselves, never each other.
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

PACKAGE = "softprompt_ext"
WORKFLOWS = ("training", "tasks", "inference", "analysis")
FACES = (f"{PACKAGE}", f"{PACKAGE}.cli", f"{PACKAGE}.__main__")


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _type_checking_block(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and (
        (isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING")
        or (isinstance(node.test, ast.Attribute) and node.test.attr == "TYPE_CHECKING")
    )


def imports_of(
    path: Path, name: str, is_package: bool, modules: set[str], type_checking: bool = False
) -> set[str]:
    """Package-internal modules that `name` imports (resolved to existing modules): at run time, plus those under
    `if TYPE_CHECKING:` when `type_checking`."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skip: set[int] = set()
    for node in ast.walk(tree):
        if not type_checking and _type_checking_block(node):
            for child in ast.walk(node):
                skip.add(id(child))
    base = name.split(".") if is_package else name.split(".")[:-1]
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        targets: list[str] = []
        if isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = base[: len(base) - (node.level - 1)] if node.level > 1 else base
                prefix = ".".join(anchor + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            for alias in node.names:
                targets.append(f"{prefix}.{alias.name}")  # `from pkg import module`
                targets.append(prefix)
        elif isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) == "import_module":
            if node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
                targets = [node.args[0].value]
        for target in targets:
            if target in modules and target != name:
                found.add(target)
                break
    return found


def build_graph(root: Path, type_checking: bool = False) -> dict[str, set[str]]:
    files = sorted((root / PACKAGE).rglob("*.py"))
    names = {module_name(f, root): f for f in files}
    modules = set(names)
    return {
        name: imports_of(path, name, path.name == "__init__.py", modules, type_checking)
        for name, path in sorted(names.items())
    }


def layer(name: str) -> str:
    parts = name.split(".")
    if len(parts) > 1 and parts[1] in WORKFLOWS:
        return parts[1]
    if len(parts) > 1 and parts[1] == "adapters":
        return "adapters"
    return "core"


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected component with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    sys.setrecursionlimit(10_000)
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def layer_violations(graph: dict[str, set[str]]) -> list[str]:
    bad = []
    for source, targets in sorted(graph.items()):
        if source in FACES or source.startswith(f"{PACKAGE}.__init__"):
            continue
        for target in sorted(targets):
            src, dst = layer(source), layer(target)
            if dst in WORKFLOWS and src != dst:
                # a subpackage's __init__ is part of that subpackage
                bad.append(f"{source} ({src}) imports {target} ({dst})")
    return bad


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quiet", action="store_true", help="print only violations")
    parser.add_argument("--root", default=str(Path(__file__).resolve().parent.parent))
    args = parser.parse_args(argv)
    graph = build_graph(Path(args.root))
    if not args.quiet:
        for name, targets in graph.items():
            short = sorted(t.removeprefix(f"{PACKAGE}.") for t in targets)
            print(f"{name.removeprefix(PACKAGE + '.') or PACKAGE:34} [{layer(name):9}] -> {', '.join(short) or '-'}")
    cycles, layers = find_cycles(build_graph(Path(args.root), type_checking=True)), layer_violations(graph)
    for cycle in cycles:
        print("cycle: " + " <-> ".join(cycle))
    for violation in layers:
        print("layer: " + violation)
    print(f"{len(graph)} modules, {sum(map(len, graph.values()))} imports, {len(cycles)} cycles, "
          f"{len(layers)} imports across layers")
    return 1 if cycles or layers else 0


if __name__ == "__main__":
    raise SystemExit(main())
