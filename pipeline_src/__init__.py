"""The pipeline's package: a regular package, never filled from another checkout.

Two checkouts may share one venv, whose editable install (`pip install -e .`) names one of them. Run from
the other, Python finds this package first (the working directory, or the Snakefile's folder, comes first
on sys.path), and as a regular package (this file) it is taken whole from there. But the editable
install's finder (setuptools) would still supply a module of the package missing here from the checkout it
names, whose REPO_ROOT then points there. `_OwnFolder`, first in line, takes the package's direct
submodules from this folder or not at all (deeper ones Python already looks up in their parent's folder).

Nothing of the package is imported here: every job imports this file first, the start-up worker's client
among them (pipeline_src/plumbing/worker/ imports nothing else of the package).
"""
import sys
from importlib.machinery import PathFinder


class _OwnFolder:
    """A meta path finder for pipeline_src.<name>: the package's own folder, else ModuleNotFoundError."""

    @staticmethod
    def find_spec(name, path=None, target=None):
        package = sys.modules.get(__name__)  # the package as imported now, not when this file first ran
        if package is None or name.rpartition(".")[0] != __name__:
            return None
        spec = PathFinder.find_spec(name, package.__path__)
        if spec is None:
            raise ModuleNotFoundError(f"No module named {name!r} in {package.__path__[0]}", name=name)
        return spec


if not any(getattr(finder, "__qualname__", None) == _OwnFolder.__qualname__ for finder in sys.meta_path):
    sys.meta_path.insert(0, _OwnFolder)
