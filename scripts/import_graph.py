"""Print the import graph of `softprompt_ext` and check its rules: no cycles, no imports back up the layers.

    python scripts/import_graph.py            # prints every module's package-internal imports, then checks
    python scripts/import_graph.py --quiet    # checks only; exit 1 on a violation
    python scripts/import_graph.py --write-layout   # regenerates docs/reference/layout.md from the graph

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
import re
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


LAYOUT = Path("docs") / "reference" / "layout.md"
LAYER_TITLES = {
    "core": "The core (top of the package: producing, placing and reading a prompt)",
    "adapters": "adapters/ (reading, validating, saving, carding and pushing adapter files)",
    "training": "training/ (workflow)",
    "tasks": "tasks/ (workflow)",
    "inference": "inference/ (workflow)",
    "analysis": "analysis/ (workflow)",
}
# file names used twice, and why each keeps its name
SAME_NAMES = {
    "registry.py": "`tasks/registry.py` registers tasks by name; `inference/serving/registry.py` is the server's "
    "store of loaded adapters. Each is named for what it registers inside its own package.",
    "metrics.py": "`tasks/metrics.py` scores predictions (accuracy, F1); `inference/serving/metrics.py` counts the "
    "server's requests. Each is read with its package's name.",
    "scoring.py": "`inference/scoring.py` is the one label scorer; `benchmarks/scoring.py` is the benchmark that "
    "times it against the old way (benchmarks are named for what they measure).",
}
OUTSIDE = """\
examples/     quickstart.py, supersense.py (the README's main job), train_text2text.py, superglue.py,
              train_multitask.py, accelerate/ (launch configs)
benchmarks/   one entry point per measurement, run as `python -m benchmarks.<name>`; common.py (run info,
              atomic reports, result folders, free port); results/<benchmark>/; RESULTS.md (the index of
              every report), QUALITY.md
scripts/      import_graph.py (this graph, this page); embedded_build/ (the embedded model's build, one entry
              point: `python -m scripts.embedded_build`); peft_suite/ (PEFT's own tests against the plugin);
              gpu_scale_out_check.sh
tests/        pytest suite (offline), one test_<module>.py per module; helpers.py (shared helpers, imported),
              conftest.py (fixtures only), hub_server.py (a local Hub server), scripts/ (multi-process drivers)
"""


def summary(path: Path) -> str:
    """The first sentence of a module's docstring (its first paragraph, cut after the first full stop), or "-"."""
    doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8")))
    if not doc:
        return "-"
    paragraph = " ".join(doc.strip().split("\n\n")[0].split())
    stop = re.search(r"(?<! al)(?<!e\.g)(?<!i\.e)\.(?= )", paragraph)  # not "et al." / "e.g." / "i.e."
    return (paragraph[: stop.end()] if stop else paragraph).replace("|", "\\|")


def layout_markdown(root: Path) -> str:
    """docs/reference/layout.md: every module of the package by layer, what it does and what it imports."""
    graph = build_graph(root)
    lines = [
        "# Project layout",
        "",
        "<!-- generated by `python scripts/import_graph.py --write-layout`; tests/test_architecture.py checks it -->",
        "",
        "The core sits at the top of the package; the workflows around it are subpackages. "
        "`python scripts/import_graph.py` prints the import graph and checks its rules: no cycles (type-checking "
        "imports included); the core and `adapters/` never import a workflow; a workflow imports only the core, "
        "`adapters/` and itself. Only the faces (`__init__.py`, `cli.py`) may import anything.",
        "",
    ]
    for key, title in LAYER_TITLES.items():
        lines += [f"## {title}", "", "| module | what it does | imports (package-internal) |", "|---|---|---|"]
        for name, targets in graph.items():
            if layer(name) != key:
                continue
            parts = name.split(".")
            is_package = (root / Path(*parts) / "__init__.py").is_file()
            path = root / Path(*parts) / "__init__.py" if is_package else root / Path(*parts[:-1]) / f"{parts[-1]}.py"
            rel = path.relative_to(root).as_posix()
            short = ", ".join(f"`{t.removeprefix(PACKAGE + '.')}`" for t in sorted(targets)) or "-"
            lines.append(f"| `{rel}` | {summary(path)} | {short} |")
        lines.append("")
    lines += ["## Same file name, different job", ""]
    lines += [f"- `{name}`: {why}" for name, why in SAME_NAMES.items()]
    lines += ["", "## Outside the package", "", "```", OUTSIDE.rstrip("\n"), "```", ""]
    lines += [
        "**Public API.** The entry points a user needs first are imported from `softprompt_ext` itself "
        "(`softprompt_ext.__all__`); specialist names from the module above that defines them. Names starting "
        "with `_` are private.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quiet", action="store_true", help="print only violations")
    parser.add_argument("--root", default=str(Path(__file__).resolve().parent.parent))
    parser.add_argument("--write-layout", action="store_true", help=f"regenerate {LAYOUT.as_posix()} and exit")
    args = parser.parse_args(argv)
    if args.write_layout:
        (Path(args.root) / LAYOUT).write_text(layout_markdown(Path(args.root)), encoding="utf-8")
        print(f"wrote {LAYOUT.as_posix()}")
        return 0
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
