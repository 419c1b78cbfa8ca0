"""The shape of src/ (docs/architecture.md), checked on the source: floors that import only downwards (no
cycles), a loop that never imports the flag module, short loop functions and few positional parameters. Fast:
the AST only, no torch."""
import ast

from conftest import REPO

SRC = REPO / "src"
FLOORS = {"runtime": 0, "files": 1, "data": 2, "models": 2, "augment": 2, "tasks": 2, "state": 3, "loop": 3,
          "app": 4}


def _modules():
    for path in sorted(SRC.rglob("*.py")):
        parts = path.relative_to(REPO).with_suffix("").parts
        yield ".".join(parts[:-1] if parts[-1] == "__init__" else parts), path


def _imports(name, path):
    """The src modules a module imports (anywhere in it: lazy imports count), resolved to module names."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    known = {n for n, _ in _modules()}
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([node.module] if node.module else []))
            if not base.startswith("src"):
                continue
            for alias in node.names:
                full = base + "." + alias.name
                found.add(full if full in known else base)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("src."))
    return {m for m in found if m in known and m != name}


def _floor(module):
    parts = module.split(".")
    return FLOORS.get(parts[1]) if len(parts) > 1 else None


def test_no_import_cycles_and_no_import_from_a_higher_floor():
    graph = {name: _imports(name, path) for name, path in _modules()}
    upward = ["%s -> %s" % (m, d) for m, deps in graph.items() for d in deps
              if _floor(m) is not None and _floor(d) is not None and _floor(d) > _floor(m)
              and not (m == "src.models" and d == "src.state.fileformat")]  # from_checkpoint: models read checkpoints
    assert not upward, "imports from a higher floor: %s" % upward
    state = {}

    def visit(node, trail):
        if state.get(node) == "done":
            return
        assert state.get(node) != "open", "import cycle: %s" % " -> ".join(trail + [node])
        state[node] = "open"
        for dep in sorted(graph[node]):
            if not dep.startswith(node + "."):  # a package importing its own modules (registries) is no cycle
                visit(dep, trail + [node])
        state[node] = "done"

    for name in sorted(graph):
        visit(name, [])


def test_the_loop_imports_no_flag_module():
    for name, path in _modules():
        if name.startswith("src.loop"):
            assert "src.app.flags" not in _imports(name, path), name


def _functions(path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node


def test_loop_functions_are_short_and_no_function_takes_more_than_5_positional_parameters():
    long, wide = [], []
    for name, path in _modules():
        for fn in _functions(path):
            lines = fn.end_lineno - fn.lineno + 1
            if name.startswith("src.loop") and lines > 60:
                long.append("%s.%s: %d lines" % (name, fn.name, lines))
            args = [a.arg for a in fn.args.posonlyargs + fn.args.args if a.arg not in ("self", "cls")]
            if len(args) > 5:
                wide.append("%s.%s: %d positional parameters" % (name, fn.name, len(args)))
    assert not long, long
    assert not wide, wide
