"""Every layer only looks down: platforms < cloner < pool < the CLI.

The package is read as source (no imports run), so the check also sees imports
written inside functions, which is where a loop used to hide.
"""

import ast
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Folder on disk -> package it installs as.
SOURCES = {
    "gilclone": "gilclone",
    "platforms": "gilclone.platforms",
    "cloner": "gilclone.cloner",
    "pool": "gilclone.pool",
}

# Lower number = lower layer. A module may import its own layer or any below it.
BASE, PLATFORMS, CLONER, POOL, TOP = range(5)
LAYER_NAMES = {BASE: "base", PLATFORMS: "platforms", CLONER: "cloner", POOL: "pool", TOP: "top"}
BASE_MODULES = ("gilclone", "gilclone.errors", "gilclone.log")


def layer_of(module: str) -> int:
    if module in BASE_MODULES:
        return BASE
    for prefix, layer in (
        ("gilclone.platforms", PLATFORMS),
        ("gilclone.cloner", CLONER),
        ("gilclone.pool", POOL),
    ):
        if module == prefix or module.startswith(prefix + "."):
            return layer
    return TOP


def package_modules():
    """(module name, file path) for every module of the installed package, read from disk."""
    for folder, package in SOURCES.items():
        base = os.path.join(ROOT, folder)
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames[:] = [d for d in dirnames if d != "__pycache__"]
            rel = os.path.relpath(dirpath, base)
            prefix = package if rel == "." else package + "." + rel.replace(os.sep, ".")
            if folder == "gilclone" and rel != "." and not os.path.exists(
                os.path.join(dirpath, "__init__.py")
            ):
                continue
            for name in filenames:
                if not name.endswith(".py"):
                    continue
                stem = name[:-3]
                module = prefix if stem == "__init__" else prefix + "." + stem
                yield module, os.path.join(dirpath, name)


def imports_of(module: str, path: str):
    """(line, imported gilclone module) for every import in the file, at any depth.

    A string that names a module of the package counts too: it is how modules
    are imported through importlib.
    """
    with open(path) as f:
        tree = ast.parse(f.read(), path)
    is_package = path.endswith("__init__.py")
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and _is_module(node.value):
            yield node.lineno, node.value  # a name handed to importlib.import_module
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("gilclone"):
                    yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = module.split(".")
                keep = len(parts) - node.level + (1 if is_package else 0)
                target = ".".join(parts[:keep] + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not target.startswith("gilclone"):
                continue
            # `from gilclone.cloner import store` imports gilclone.cloner.store.
            for alias in node.names:
                candidate = target + "." + alias.name
                yield node.lineno, candidate if _is_module(candidate) else target


def _is_module(name: str) -> bool:
    return name in _ALL_MODULES


_ALL_MODULES = {m for m, _ in package_modules()}


def test_the_package_is_found():
    assert {"gilclone.main", "gilclone.cloner.prepare", "gilclone.pool.executor",
            "gilclone.platforms.binary"} <= _ALL_MODULES


def upward_imports():
    found = []
    for module, path in package_modules():
        own = layer_of(module)
        for line, target in imports_of(module, path):
            if layer_of(target) > own:
                rel = os.path.relpath(path, ROOT)
                found.append(
                    f"{rel}:{line}: {LAYER_NAMES[own]} module {module} imports "
                    f"{LAYER_NAMES[layer_of(target)]} module {target}"
                )
    return found


def test_no_layer_imports_a_higher_one():
    assert upward_imports() == []


def test_the_check_sees_an_upward_import(tmp_path):
    # The import that once ran upward (cloner -> pool), hidden inside a function.
    path = tmp_path / "verify_child.py"
    path.write_text("def run():\n    from gilclone.pool.worker import WorkerContext\n")
    module = "gilclone.cloner.verify_child"
    found = [(line, target) for line, target in imports_of(module, str(path))
             if layer_of(target) > layer_of(module)]
    assert found == [(2, "gilclone.pool.worker")]


def module_graph():
    graph = {}
    for module, path in package_modules():
        graph[module] = {t for _, t in imports_of(module, path) if t in _ALL_MODULES and t != module}
    return graph


def import_cycles(graph):
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []
    counter = [0]

    def visit(node):
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return cycles


def test_import_cycle_detection_works():
    assert import_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycles_even_inside_functions():
    # A package __init__ importing its own submodules is not a loop worth reporting.
    graph = {m: {t for t in ts if not m.startswith(t + ".")} for m, ts in module_graph().items()}
    assert import_cycles(graph) == []


def test_the_old_doctor_loop_would_be_seen(tmp_path):
    # doctor -> builders -> (by importlib name) pe_clone -> (inside a function) doctor.
    sources = {
        "gilclone.cloner.doctor": "from gilclone.cloner.builders import builder_for\n",
        "gilclone.cloner.builders": "import importlib\n_MODULES = {'PE': 'gilclone.cloner.pe_clone'}\n",
        "gilclone.cloner.pe_clone": "def doctor_findings():\n    from gilclone.cloner.doctor import Finding\n",
    }
    graph = {}
    for module, text in sources.items():
        path = tmp_path / (module + ".py")
        path.write_text(text)
        graph[module] = {t for _, t in imports_of(module, str(path)) if t != module}
    assert import_cycles(graph) == [sorted(sources)]
