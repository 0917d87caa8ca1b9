"""How the code is laid out: files and lines per package, the longest functions, the functions that take
(metric, mode), and which of our modules each hand-over command passes through. Issue #25's before/after table.

    python bench/architecture.py                                  # the static table (no run)
    python bench/architecture.py --experiment runs/X --data DIR  # + the modules tune.best's paths run through

A module "passed through" is one of ours (dogs/, tune/) with at least one of its functions called in the driver
process (sys.setprofile) while tune.best runs; Ray workers (--retrain --top's runs) are not counted. Each path runs
in its own process on a temporary copy of the experiment (--retrain --top writes its runs into it).
"""
import argparse
import ast
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("dogs", "tune", "bench")
PATHS = {   # the three hand-over paths: tune.best's flags after --experiment
    "--submit": ["--submit"],
    "--predict": ["--predict", "{data}/Test"],
    "--retrain --top": ["--retrain", "--top", "1", "--seeds", "1", "--submit"],
}


# ----------------------------------------------------------------------------- the static table
def functions(tree):
    """(qualified name, lines) of every function and method in a module's AST."""
    out = []

    def walk(node, prefix):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                out.append((prefix + child.name, child.end_lineno - child.lineno + 1, child))
                walk(child, prefix + child.name + ".")
            elif isinstance(child, ast.ClassDef):
                walk(child, prefix + child.name + ".")
    walk(tree, "")
    return out


def takes_metric_and_mode(node):
    names = {a.arg for a in node.args.args + node.args.kwonlyargs + node.args.posonlyargs}
    return {"metric", "mode"} <= names


def static_table():
    rows, longest, pairs = [], [], []
    for package in PACKAGES:
        files = sorted((ROOT / package).glob("*.py"))
        lines = sum(len(f.read_text().splitlines()) for f in files)
        rows.append((package, len(files), lines))
        for f in files:
            for name, length, node in functions(ast.parse(f.read_text())):
                where = f"{package}/{f.name}:{name}"
                longest.append((length, where))
                if takes_metric_and_mode(node):
                    pairs.append(where)
    return rows, sorted(longest, reverse=True), pairs


# ----------------------------------------------------------------------------- one path, traced
TRACER = """
import sys, json, threading
roots = {roots!r}
seen = set()
def profile(frame, event, arg):   # a function's code (CO_NEWLOCALS), not a module or class body run on import
    if event == "call" and frame.f_code.co_flags & 0x2:
        name = frame.f_code.co_filename
        if name.startswith(roots):
            seen.add(name)
sys.setprofile(profile)
threading.setprofile(profile)   # the hand-over's work may run in threads of ours (a bounded wait, a pool)
from tune import best
try:
    code = best.main({argv!r})
except SystemExit as stop:
    code = stop.code
sys.setprofile(None)
print("MODULES " + json.dumps(sorted(seen)))
"""


def traced(argv):
    """(exit code, sorted our-module names) of tune.best.main(argv) in a fresh process."""
    roots = tuple(str(ROOT / p) + os.sep for p in ("dogs", "tune"))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_AUTH_MODE": os.environ.get("RAY_AUTH_MODE", "disabled")}
    done = subprocess.run([sys.executable, "-c", TRACER.format(roots=roots, argv=argv)], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=900)
    lines = [line for line in done.stdout.splitlines() if line.startswith("MODULES ")]
    if not lines:
        raise SystemExit(f"{argv}: no trace\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    files = json.loads(lines[-1].removeprefix("MODULES "))
    return done.returncode, sorted(str(Path(f).relative_to(ROOT).with_suffix("")).replace(os.sep, ".")
                                   for f in files)


# ----------------------------------------------------------------------------- main
def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--experiment", help="a finished experiment folder: trace the three hand-over paths on it")
    p.add_argument("--data", help="its data folder (--predict reads DATA/Test)")
    args = p.parse_args()

    rows, longest, pairs = static_table()
    print("| package | files | lines |\n| --- | ---: | ---: |")
    for package, files, lines in rows:
        print(f"| {package}/ | {files} | {lines} |")
    print("\nlongest functions: " + "; ".join(f"{where} {length}" for length, where in longest[:5]))
    print(f"functions over 60 lines: {sum(length > 60 for length, _ in longest)}")
    print(f"functions taking (metric, mode): {len(pairs)}: {', '.join(pairs)}")
    if not args.experiment:
        return
    for path, flags in PATHS.items():
        with tempfile.TemporaryDirectory() as tmp:
            copy = shutil.copytree(args.experiment, Path(tmp, "experiment"))
            argv = ["--experiment", str(copy), "--out", str(Path(tmp, "out")),
                    *[flag.format(data=args.data) for flag in flags]]
            code, modules = traced(argv)
        ours = [m for m in modules if m.startswith("tune.")]
        print(f"\ntune.best {path}: exit {code}; {len(modules)} of our modules ({len(ours)} in tune/, "
              f"{len(modules) - len(ours)} in dogs/): {', '.join(modules)}")


if __name__ == "__main__":
    main()
