"""The package's public face: ``__all__``, what ``help(arraywire)`` shows, the
docstrings of the public functions and the module docstring's example."""

from __future__ import annotations

import ast
import doctest
import inspect
import pickle
import pydoc
import types
from importlib import resources

import pytest

import arraywire
import arraywire.aio
from arraywire._core import transport_py

try:
    from arraywire._core import transport_c
except ImportError:  # core/test_backends.py fails loudly unless this is intended
    transport_c = None

PUBLIC_CLASSES = sorted(name for name in arraywire.__all__ if isinstance(getattr(arraywire, name), type))
TRANSFER_FUNCTIONS = ["recv_into", "recvmsg_into", "send_from", "sendmsg_from"]
MESSAGE_FUNCTIONS = ["recv_array", "recv_arrays", "recv_message", "send_array", "send_arrays"]
CHANNEL_METHODS = ["recv", "recv_arrays", "recv_message", "send", "send_arrays", "send_many"]
# The callables that move data or open connections, by their public names:
# each says what it returns (or, iterating, yields) and raises. Properties,
# close() and fileno() need one line, and are left out.
DOCUMENTED_CALLABLES = [
    *(f"arraywire.{name}" for name in MESSAGE_FUNCTIONS + TRANSFER_FUNCTIONS),
    "arraywire.connect",
    "arraywire.listen",
    "arraywire.Listener.accept",
    *(f"arraywire.Channel.{name}" for name in CHANNEL_METHODS),
    "arraywire.Channel.__iter__",
    *(f"arraywire.aio.{name}" for name in [*MESSAGE_FUNCTIONS, "recv_into", "send_from"]),
    "arraywire.aio.connect",
    "arraywire.aio.listen",
    "arraywire.aio.Listener.accept",
    *(f"arraywire.aio.Channel.{name}" for name in CHANNEL_METHODS),
    "arraywire.aio.Channel.__aiter__",
]


def test_all_names_exist_once() -> None:
    assert [name for name in arraywire.__all__ if not hasattr(arraywire, name)] == []
    assert len(set(arraywire.__all__)) == len(arraywire.__all__)


def test_every_public_name_is_in_all() -> None:
    public = {name for name in vars(arraywire) if not name.startswith("_")}
    assert public - {"aio", "dask_comm"} == set(arraywire.__all__)


def test_private_names_are_only_submodules() -> None:
    private = [
        name
        for name, value in vars(arraywire).items()
        if name.startswith("_")
        and not (name.startswith("__") and name.endswith("__"))
        and not (isinstance(value, types.ModuleType) and value.__name__ == f"arraywire.{name}")
    ]
    assert private == []


@pytest.mark.parametrize("name", PUBLIC_CLASSES)
def test_public_class_belongs_to_the_package(name: str) -> None:
    cls = getattr(arraywire, name)
    assert cls.__module__ == "arraywire"
    assert getattr(arraywire, cls.__qualname__) is cls


def test_exceptions_pickle_under_the_package_name() -> None:
    error = arraywire.IncompleteTransferError(3, 8)
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is arraywire.IncompleteTransferError
    assert (copy.bytes_done, copy.bytes_expected) == (3, 8)
    assert type(pickle.loads(pickle.dumps(arraywire.ProtocolError("x")))) is arraywire.ProtocolError


def test_help_shows_only_public_names() -> None:
    text = pydoc.render_doc(arraywire, renderer=pydoc.plaintext)
    for hidden in ("_impl", "SUBMODULES", "arraywire._", "_public_class"):
        assert hidden not in text
    for name in arraywire.__all__:
        assert name in text
    for name in PUBLIC_CLASSES:
        # classes of another module would be listed as arraywire._module.Name
        assert f"\n    class {name}(" in text


@pytest.mark.parametrize("name", PUBLIC_CLASSES)
def test_help_on_a_class_names_the_package(name: str) -> None:
    text = pydoc.render_doc(getattr(arraywire, name), renderer=pydoc.plaintext)
    assert f"class {name} in module arraywire\n" in text


def test_module_docstring_says_what_matters() -> None:
    doc = inspect.getdoc(arraywire)
    assert doc is not None
    for topic in ("listen", "connect", "Channel", "send_array", "send_from", "BACKEND", "docs/PROTOCOL.md"):
        assert topic in doc


def test_module_docstring_example_runs() -> None:
    runner = doctest.DocTestRunner()
    results = [runner.run(test) for test in doctest.DocTestFinder(recurse=False).find(arraywire)]
    assert sum(result.attempted for result in results) > 0
    assert sum(result.failed for result in results) == 0


@pytest.mark.parametrize("path", DOCUMENTED_CALLABLES)
def test_public_function_says_what_it_returns_and_raises(path: str) -> None:
    function = pydoc.locate(path)
    assert callable(function), path
    doc = inspect.getdoc(function)
    assert doc is not None
    if path.endswith(("__iter__", "__aiter__")):
        assert "\nYields\n------\n" in doc
    else:
        assert "\nReturns\n-------\n" in doc
    assert "\nRaises\n------\n" in doc


def stub_docstrings() -> dict[str, str | None]:
    text = resources.files("arraywire").joinpath("_core", "transport_c.pyi").read_text("utf-8")
    return {
        node.name: ast.get_docstring(node)
        for node in ast.parse(text).body
        if isinstance(node, ast.FunctionDef)
    }


@pytest.mark.parametrize("name", TRANSFER_FUNCTIONS)
def test_stub_docstring_is_the_pure_twins(name: str) -> None:
    assert stub_docstrings()[name] == inspect.getdoc(getattr(transport_py, name))


@pytest.mark.c_extension
@pytest.mark.skipif(transport_c is None, reason="the compiled backend was not built")
@pytest.mark.parametrize("name", TRANSFER_FUNCTIONS)
def test_compiled_docstring_is_the_pure_twins(name: str) -> None:
    compiled = getattr(transport_c, name)
    assert inspect.getdoc(compiled) == inspect.getdoc(getattr(transport_py, name))


@pytest.mark.parametrize(
    "name", ["AuthenticationError", "BrokenStreamError", "IncompleteTransferError", "ProtocolError"]
)
def test_exception_says_what_raises_it(name: str) -> None:
    assert "Raised by " in (inspect.getdoc(getattr(arraywire, name)) or "")
