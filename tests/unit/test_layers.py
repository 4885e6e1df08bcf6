"""The package's layers: every import points down (or within a layer), no import
cycle, and README.md's "Layout and layers" names every module.

Imports under ``if TYPE_CHECKING:`` are annotations only and are not counted. A new
module goes into ``LAYERS`` (and README.md) where it belongs.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "s3fuse"

#: bottom to top; a module may import from its own layer and the ones before it
LAYERS: list[tuple[str, set[str]]] = [
    ("basics", {"s3fuse", "errors", "faults", "words", "metadata", "control", "keys",
                "config", "retry"}),
    ("object stores", {"store", "store.base", "store._body", "store._listing",
                       "store.memory", "store.faulty", "store.file", "store._fileio",
                       "store.file_versions", "store._s3errors", "store._s3multipart",
                       "store.s3"}),
    ("points in a bucket's history", {"timeline", "forkstore"}),
    ("local state, the store from trio", {"oplog", "journal", "cache", "cachelock",
                                          "remote", "metrics", "capcache"}),
    ("namespace", {"namespace"}),
    ("S3-wins policy, fetching", {"reconcile", "fetch"}),
    ("background work, discovery", {"flusher_ops", "flusher", "discovery_checks",
                                      "discovery"}),
    ("file contents, rename", {"contents", "rename"}),
    ("the filesystem, the views of the past", {"xattrs", "filesystem", "viewtree",
                                                "views"}),
    ("the FUSE adapter, the offline checker", {"fuse_ops", "fsck", "fsck_bucket",
                                               "fsck_findings"}),
    ("the composition root", {"daemon"}),
    ("the command line", {"cli", "client", "workspace", "snapshots", "history", "restore",
                          "fork", "cli_timetravel"}),
]


def _name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    name = ".".join(parts)
    return "s3fuse" if name == "s3fuse" else name.removeprefix("s3fuse.")


def _imports(path: Path, modules: set[str]) -> set[str]:
    """The package modules ``path`` imports at run time (anywhere in the file)."""
    me = _name(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    found: set[str] = set()

    def absolute(module: str) -> str:
        return "s3fuse" if module == "s3fuse" else module.removeprefix("s3fuse.")

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue
            if isinstance(child, ast.ImportFrom):
                if child.level:
                    base = [] if package in ("s3fuse", "") else package.split(".")
                    base = base[:len(base) - (child.level - 1)] if child.level > 1 else base
                    mod = ".".join(base + ([child.module] if child.module else []))
                    mod = mod or "s3fuse"
                elif (child.module or "").split(".")[0] == "s3fuse":
                    mod = absolute(child.module or "")
                else:
                    continue
                for alias in child.names:
                    sub = alias.name if mod == "s3fuse" else f"{mod}.{alias.name}"
                    found.add(sub if sub in modules else mod)
            elif isinstance(child, ast.Import):
                for alias in child.names:
                    if alias.name.split(".")[0] == "s3fuse":
                        found.add(absolute(alias.name))
            visit(child)

    visit(ast.parse(path.read_text()))
    found.discard(me)
    return found


def _graph() -> dict[str, set[str]]:
    paths = sorted(PACKAGE.rglob("*.py"))
    modules = {_name(p) for p in paths}
    return {_name(p): _imports(p, modules) for p in paths}


def test_every_module_has_a_layer_and_imports_only_down():
    layer_of = {m: i for i, (_, ms) in enumerate(LAYERS) for m in ms}
    graph = _graph()
    unplaced = sorted(set(graph) - set(layer_of))
    assert not unplaced, f"modules with no layer (add them to LAYERS and README): {unplaced}"
    assert not set(layer_of) - set(graph), "LAYERS names modules that do not exist"
    up = [(m, d) for m, deps in graph.items() for d in deps if layer_of[d] > layer_of[m]]
    assert not up, f"imports pointing up a layer: {up}"


def test_no_import_cycle():
    graph = _graph()
    state: dict[str, int] = {}  # 1: on the path, 2: done

    def walk(m: str, path: list[str]) -> None:
        state[m] = 1
        for d in sorted(graph.get(m, ())):
            assert state.get(d) != 1, f"import cycle: {' -> '.join(path + [m, d])}"
            if d not in state:
                walk(d, path + [m])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            walk(m, [])


def test_the_readme_lists_every_module_and_the_layer_order():
    readme = (ROOT / "README.md").read_text()
    section = readme.split("### Layout and layers", 1)[1].split("\n## ", 1)[0]
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        if path.name == "__init__.py" and path.parent == PACKAGE:
            continue
        shown = rel.rsplit("/", 1)[0] + "/" if path.parent.name == "store" else rel
        assert shown in section, f"README.md's layout does not list {shown}"
    order = [section.index(f"{i + 1}. {name}") for i, (name, _) in enumerate(LAYERS)]
    assert order == sorted(order)
