"""Import lava-nc on Python 3.11+ without touching site-packages.

lava-nc 0.10.0's ``lava/magma/compiler/var_model.py`` gives dataclass fields a
mutable default (``x: ByteEncoder = ByteEncoder()``), which Python 3.11 rejects
at import. Where that import fails, :func:`ensure_lava` installs an import hook
that compiles that one module from its source with the defaults rewritten to
``field(default_factory=ByteEncoder)``. Where lava imports cleanly it does
nothing. It also lets lava's runtime import after something else (tqdm's lock, for
one) has already fixed multiprocessing's start method to the ``fork`` that lava
sets unconditionally. Everything in st2chip imports lava through this module, so
that where Lava (or one of its dependencies) is missing, the user reads how to
install it instead of a traceback.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import re
import sys

from st2chip.errors import InputError

_TARGET = "lava.magma.compiler.var_model"
_RUNTIME_MP = "lava.magma.runtime.message_infrastructure.multiprocessing"
_MUTABLE_DEFAULT = re.compile(r"(:\s*ByteEncoder\s*=\s*)ByteEncoder\(\)")
_patched = False
# Lava declares Requires-Python < 3.11 and pins old versions, so pip cannot install it as a dependency of st2chip
INSTALL_HINT = ("pip install 'st2chip[lava]' && pip install --no-deps --ignore-requires-python "
                "lava-nc==0.10.0 lava-dl==0.6.0 (in a checkout, make install does both)")
WITHOUT_LAVA = "--backend reference (--backends float,reference for verify) leaves Lava out"


class _VarModelLoader(importlib.machinery.SourceFileLoader):
    """Loads var_model.py with its mutable dataclass defaults made factories."""

    def get_code(self, fullname):  # type: ignore[override]
        # Always compile from source: a cached .pyc holds the unpatched module.
        path = self.get_filename(fullname)
        source = importlib.util.decode_source(self.get_data(path))
        source = _MUTABLE_DEFAULT.sub(r"\1__import__('dataclasses').field(default_factory=ByteEncoder)", source)
        return compile(source, path, "exec", dont_inherit=True)


class _VarModelFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path, target=None):
        if fullname != _TARGET:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None and spec.origin:
                spec.loader = _VarModelLoader(fullname, spec.origin)
                return spec
        return None


def missing_lava(err: ModuleNotFoundError) -> InputError:
    """The one-line error for a Lava import that failed on a missing module: Lava itself or one it imports."""
    if err.name is not None and (err.name == "lava" or err.name.startswith("lava.")):
        return InputError(f"the lava backend needs Lava (lava-nc 0.10.0, lava-dl 0.6.0), which is not installed "
                          f"here; install it with: {INSTALL_HINT}; {WITHOUT_LAVA}")
    return InputError(f"Lava is installed but cannot import module '{err.name}' that it needs; install Lava's "
                      f"dependencies with: {INSTALL_HINT}; {WITHOUT_LAVA}")


def _needs_patch() -> bool:
    try:
        importlib.import_module(_TARGET)
        return False
    except ValueError as err:
        if "mutable default" not in str(err):
            raise
        for name in [m for m in sys.modules if m == _TARGET or m.startswith(_TARGET + ".")]:
            del sys.modules[name]
        return True


def _import_runtime() -> None:
    """Import lava's multiprocessing runtime, tolerating an already chosen ``fork`` start method."""
    import multiprocessing as mp

    if _RUNTIME_MP in sys.modules:
        return
    current = mp.get_start_method(allow_none=True)
    if current is None:
        importlib.import_module(_RUNTIME_MP)
        return
    if current != "fork":
        raise RuntimeError(f"lava needs the 'fork' multiprocessing start method, but '{current}' is set")
    original = mp.set_start_method

    def keep_fork(method: str, force: bool = False) -> None:
        if method != current:
            original(method, force)

    mp.set_start_method = keep_fork
    try:
        importlib.import_module(_RUNTIME_MP)
    finally:
        mp.set_start_method = original


def ensure_lava() -> bool:
    """Make ``import lava...`` work; return True when the var_model fix was applied.

    Where Lava or a module it imports is missing: an :class:`InputError` that says how to install it.
    """
    global _patched
    try:
        if not _patched and _needs_patch():
            sys.meta_path.insert(0, _VarModelFinder())
            importlib.import_module(_TARGET)
            _patched = True
        _import_runtime()
    except ModuleNotFoundError as err:
        raise missing_lava(err) from None
    return _patched
