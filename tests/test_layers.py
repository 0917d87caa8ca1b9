"""The architecture checked, not described (docs/ARCHITECTURE.md states these rules): every import of our modules,
read from their source (function-level imports too), against the layers."""
import ast
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LAYERS = ("bench", "tune", "dogs")   # each imports only the ones after it
COMMANDS = {"dogs.train", "tune.search", "tune.best", "tune.serve"}   # the top: only tests and bench import them
# a command that runs another's work: tune.serve serves what tune.best picks (load_members); tune.best --retrain
# is dogs.train's run
COMMAND_PARTS = {"tune.serve": {"tune.best"}, "tune.best": {"dogs.train"}}
TORCH_FREE = {"dogs.config", "dogs.backbones", "dogs.ranking", "dogs.uncertainty", "dogs.errors", "dogs.cli",
              "tune.settings", "tune.spaces", "tune.space_values", "tune.space_values"}   # a space checks in ms


def module_name(path):
    return ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")


def imports(path, top_level_only=False, name=None):
    """{module name} that the file (the module `name`) imports (absolute and relative), each `from a import b` as
    a.b when a.b is one of ours, else a."""
    tree, name = ast.parse(path.read_text()), name or module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    nodes = tree.body if top_level_only else ast.walk(tree)
    found = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
            found |= {f"{base}.{alias.name}" if f"{base}.{alias.name}" in OURS else base for alias in node.names}
    return found


OURS = {module_name(p) for layer in LAYERS for p in (ROOT / layer).glob("*.py")}


def our_imports(top_level_only=False):
    return {module_name(p): {m for m in imports(p, top_level_only) if m.split(".")[0] in LAYERS}
            for layer in LAYERS for p in (ROOT / layer).glob("*.py")}


def test_every_import_goes_down_the_layers():
    wrong = [f"{module} imports {other}" for module, others in our_imports().items() for other in sorted(others)
             if LAYERS.index(other.split(".")[0]) < LAYERS.index(module.split(".")[0])]
    assert not wrong, "bench -> tune -> dogs only: " + "; ".join(wrong)


def test_every_import_of_ours_names_a_module_that_exists():
    """A renamed module leaves no import of its old name (tune.old_pickles's aliases would hide it where tune is
    imported, and fail where it is not: `python -m dogs.train`)."""
    wrong = [f"{module} imports {other}" for module, others in our_imports().items() for other in sorted(others)
             if other not in OURS and other not in LAYERS]
    assert not wrong, "; ".join(wrong)


def test_no_module_imports_a_command():
    wrong = [f"{module} imports the command {other}" for module, others in our_imports().items()
             for other in sorted(others & COMMANDS)
             if module.split(".")[0] != "bench" and other not in COMMAND_PARTS.get(module, ())]
    assert not wrong, "; ".join(wrong)


def test_the_space_and_config_checks_never_import_torch_or_ray():
    wrong = [f"{module} imports {other}" for module in sorted(TORCH_FREE)
             for other in sorted(imports(ROOT / f"{module.replace('.', '/')}.py"))
             if other.split(".")[0] in ("torch", "torchvision", "ray")]
    assert not wrong, "; ".join(wrong)


def test_no_import_circle():
    graph = our_imports(top_level_only=True)

    def reach(start):
        seen, todo = set(), [start]
        while todo:
            for other in graph.get(todo.pop(), ()):
                if other not in seen:
                    seen.add(other)
                    todo.append(other)
        return seen

    circles = sorted(module for module in graph if module in reach(module))
    assert not circles, f"modules that import themselves through others: {circles}"


def test_the_checker_sees_a_wrong_import(tmp_path):
    """The rules can fail: a dogs module importing tune is an import the checker reads."""
    planted = tmp_path / "planted.py"
    planted.write_text("def f():\n    from tune import best\n    from . import ranking\nimport dogs.config\n")
    assert imports(planted, name="dogs.planted") == {"tune.best", "dogs.ranking", "dogs.config"}
    assert imports(planted, top_level_only=True, name="dogs.planted") == {"dogs.config"}


def test_no_command_imports_ray_on_import():
    """Ray reads its environment (RAY_DISABLE_WORKER_LOG_PREFIX: the trials' lines without a coloured `(pid=...)`
    prefix, the local Ray on 127.0.0.1) when imported: tune.ray_setup.set_environment must run first, so no
    command imports Ray at module level."""
    code = "import sys, importlib; [importlib.import_module(m) for m in sys.argv[1:]]; print('ray' in sys.modules)"
    for command in sorted(COMMANDS):
        done = subprocess.run([sys.executable, "-c", code, command], capture_output=True, text=True, timeout=120,
                              cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
        assert done.stdout.strip() == "False", (command, done.stdout, done.stderr[-2000:])
