"""The package's import rules (issue 20), read from the source with ast: no import cycle (lazy imports inside
functions count), no module importing or reaching for a private name (`_x`) of another, inference independent
of the training pipeline (nothing in unet_perf.inference reaches unet_perf.input or unet_perf.training), layer
folders that import only earlier layers, backends that share only their base, and a Team that speaks only the
collectives contract."""
import ast
import os

from support import REPO

PACKAGE = os.path.join(REPO, "unet_perf")


def module_name(path):
    name = os.path.relpath(path, REPO)[:-len(".py")].replace(os.sep, ".")
    return name[:-len(".__init__")] if name.endswith(".__init__") else name


def read_package():
    """{module: (set of unet_perf modules it imports, [(other module, private name it imports or uses)])}."""
    paths = {module_name(os.path.join(folder, name)): os.path.join(folder, name)
             for folder, _, names in os.walk(PACKAGE) for name in names if name.endswith(".py")}
    found = {}
    for module, path in paths.items():
        with open(path) as handle:
            tree = ast.parse(handle.read(), path)
        imports, private, aliases = set(), [], {}  # aliases: local name -> the unet_perf module it is bound to
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name in paths:
                        imports.add(alias.name)
                        aliases[alias.asname or alias.name] = alias.name
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module in paths:
                for alias in node.names:
                    submodule = node.module + "." + alias.name
                    if submodule in paths:
                        imports.add(submodule)
                        aliases[alias.asname or alias.name] = submodule
                    else:
                        imports.add(node.module)
                        if alias.name.startswith("_"):
                            private.append((node.module, alias.name))
        for node in ast.walk(tree):  # module._name through an imported module
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases
                    and node.attr.startswith("_") and not node.attr.startswith("__")):
                private.append((aliases[node.value.id], node.attr))
        found[module] = (imports - {module}, private)
    return found


def reachable(graph, start):
    seen, todo = set(), list(graph[start])
    while todo:
        module = todo.pop()
        if module not in seen:
            seen.add(module)
            todo.extend(graph[module])
    return seen


def test_no_import_cycles():
    graph = {module: imports for module, (imports, _) in read_package().items()}
    assert graph["unet_perf.input.augment"]  # the walk sees imports at all
    cycles = sorted(module for module in graph if module in reachable(graph, module))
    assert cycles == []


def test_no_module_imports_a_private_name_of_another():
    violations = [(module, other, name) for module, (_, private) in sorted(read_package().items())
                  for other, name in private if other != module]
    assert violations == []


def test_inference_does_not_depend_on_the_training_pipeline():
    graph = {module: imports for module, (imports, _) in read_package().items()}
    for module in graph:
        if module.startswith("unet_perf.inference."):
            reached = reachable(graph, module)
            assert not [other for other in reached if other.startswith(("unet_perf.input.", "unet_perf.training."))], \
                module


# The layer folders in import order (README "Layout"): a module imports the foundation (the package's top level)
# and the layers before its own, never a later one.
LAYERS = ("storage", "data", "model", "input", "backends", "inference", "training")
# Modules of the backends layer that every backend may import: the contracts and what Ascend's two modules share.
SHARED_BACKEND_MODULES = ("unet_perf.backends.base", "unet_perf.backends.ascend")


def layer_of(module):
    parts = module.split(".")
    return parts[1] if len(parts) > 2 and parts[1] in LAYERS else None


def test_layers_import_only_the_foundation_and_earlier_layers():
    for module, (imports, _) in read_package().items():
        layer = layer_of(module)
        if layer is None:
            continue
        later = [other for other in imports if layer_of(other) and LAYERS.index(layer_of(other)) > LAYERS.index(layer)]
        assert not later, (module, later)


def test_no_backend_imports_another_backend():
    backends = [module for module in read_package() if module.startswith("unet_perf.backends.")]
    for module in backends:
        imports = read_package()[module][0]
        others = [other for other in imports if other in backends and other not in SHARED_BACKEND_MODULES]
        assert not others, (module, others)


def test_team_uses_only_the_collectives_contract():
    imports = read_package()["unet_perf.training.team"][0]
    assert not [other for other in imports if other.startswith("unet_perf.backends.")
                and other not in ("unet_perf.backends", "unet_perf.backends.base")], imports
