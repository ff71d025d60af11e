"""The package's import rules (issue 20), read from the source with ast: no import cycle (lazy imports inside
functions count), no module importing or reaching for a private name (`_x`) of another, and inference independent
of the training pipeline (nothing in unet_perf.inference reaches unet_perf.input or unet_perf.training)."""
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
