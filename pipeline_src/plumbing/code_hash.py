"""The code a command of `python -m pipeline_src` runs, found from the package's own imports, and its hash.

Snakemake's code trigger sees only a rule's own text, so each rule carries the hash of the code its
command runs as a param: editing any of it reruns the rule, editing anything else does not. That
code is never listed by hand (a hand-kept list missed stream.py and distributed.py): it is the
command's function in __main__.py, with the __main__ functions it calls, plus every package module
those import, then every module any of these imports, transitively. Imports count wherever they
are (module level or inside a function, which may run), as do strings naming a module of the package
(`"pipeline_src.methods.vpn:VPNMethod"` in methods.REGISTRY, imported with importlib on use).

Read with `ast` and nothing imported, so building the DAG stays torch-free and takes milliseconds.
__main__.py's `main()` (argparse) is left out: a rule passes every argument its job needs on its command
line, whose text Snakemake's own code trigger sees; a changed default of an argument a rule does not
pass reruns nothing.
"""
from __future__ import annotations

import ast
import copy
import hashlib
import re
from functools import cache
from pathlib import Path

PACKAGE = "pipeline_src"
PACKAGE_DIR = Path(__file__).resolve().parents[1]
MAIN = PACKAGE_DIR / "__main__.py"
# a string that is exactly a module path of the package, optionally with ":attribute"
_MODULE_STRING = re.compile(rf"({PACKAGE}(?:\.\w+)+)(?::\w+)?")


def module_file(name: str) -> Path | None:
    """The file of a package module or sub-package ('pipeline_src.data.prepared'), None if there is none."""
    parts = name.split(".")
    if parts[0] != PACKAGE:
        return None
    base = PACKAGE_DIR.joinpath(*parts[1:])
    for path in ([base.with_suffix(".py")] if parts[1:] else []) + [base / "__init__.py"]:
        if path.is_file():
            return path
    return None


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE_DIR).with_suffix("").parts
    return ".".join([PACKAGE, *(parts[:-1] if parts[-1] == "__init__" else parts)])


def _imports(nodes, module: str) -> set[str]:
    """Package modules imported (or named by a module string) anywhere under these nodes, with the
    sub-packages Python runs on the way (their __init__.py)."""
    own_file = module_file(module)
    package = module if own_file is not None and own_file.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in [sub for top in nodes for sub in ast.walk(top)]:
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the importing module's package, up level - 1
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            found.add(base)
            found |= {f"{base}.{alias.name}" for alias in node.names}  # `from pkg import module`
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            if match := _MODULE_STRING.fullmatch(node.value):
                found.add(match.group(1))
    with_parents = {".".join(name.split(".")[:i]) for name in found for i in range(1, name.count(".") + 2)}
    return {name for name in with_parents if module_file(name)}


def _file_imports(path: Path) -> frozenset[str]:
    return _source_imports(path, path.read_text())


@cache  # keyed on the text too, so an edited file is parsed again; the DAG build asks for 4 commands
def _source_imports(path: Path, text: str) -> frozenset[str]:
    return frozenset(_imports([ast.parse(text, str(path))], _module_name(path)))


@cache
def _main_tree(text: str) -> ast.Module:
    return ast.parse(text, str(MAIN))


def _command_functions(command: str) -> list[ast.FunctionDef]:
    """cmd_<command> of __main__.py and the __main__ functions it calls, transitively."""
    functions = {node.name: node for node in _main_tree(MAIN.read_text()).body if isinstance(node, ast.FunctionDef)}
    start = f"cmd_{command.replace('-', '_')}"
    if start not in functions:
        raise ValueError(f"python -m {PACKAGE} has no command {command!r} (no {start} in {MAIN.name})")
    reached, todo = [], [start]
    while todo:
        name = todo.pop()
        if name in functions and functions[name] not in reached:
            reached.append(functions[name])
            todo += [call.func.id for call in ast.walk(functions[name])
                     if isinstance(call, ast.Call) and isinstance(call.func, ast.Name)]
    return reached


def command_modules(command: str) -> list[Path]:
    """The package files `python -m pipeline_src <command>` may run, __main__.py aside."""
    top_imports = [node for node in _main_tree(MAIN.read_text()).body if isinstance(node, (ast.Import, ast.ImportFrom))]
    todo = sorted(_imports(top_imports + _command_functions(command), f"{PACKAGE}.__main__"))
    seen: set[str] = set()
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo += sorted(_file_imports(module_file(name)) - seen)
    return sorted(module_file(name) for name in seen)


def _without_docstrings(tree: ast.AST) -> ast.AST:
    """The tree with the docstring of every module, class and function left out (in place)."""
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and body
                and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
                and isinstance(body[0].value.value, str)):
            node.body = body[1:] or [ast.Pass()]
    return tree


@cache
def _code_of_source(text: str, name: str) -> str:
    return ast.dump(_without_docstrings(ast.parse(text, name)))


def command_code(command: str) -> str:
    """Hash of what `python -m pipeline_src <command>` runs: its __main__ functions and every package file
    it may import (name and parsed code). Parsed code, not text: comments, docstrings and layout cannot
    change a number, so editing them reruns nothing, while any change to a statement or a constant does."""
    digest = hashlib.sha256()
    for function in _command_functions(command):
        digest.update(ast.dump(_without_docstrings(copy.deepcopy(function))).encode())
    for path in command_modules(command):
        digest.update(path.relative_to(PACKAGE_DIR).as_posix().encode())
        digest.update(_code_of_source(path.read_text(), str(path)).encode())
    return digest.hexdigest()[:16]
