"""The compiled backend's stub (_transport_c.pyi, as installed) and the compiled
module itself have exactly the pure twin's functions and signatures."""

from __future__ import annotations

import ast
import inspect
from collections.abc import Callable
from importlib import resources
from types import ModuleType
from typing import Any

import pytest

from arraywire._core import transport_py

try:
    from arraywire._core import transport_c
except ImportError:  # core/test_backends.py fails loudly unless this is intended
    transport_c = None


def public_functions(module: ModuleType) -> dict[str, Callable[..., Any]]:
    return {
        name: obj
        for name, obj in vars(module).items()
        if not name.startswith("_")
        and callable(obj)
        and not isinstance(obj, type)
        and obj.__module__ == module.__name__
    }


def public_classes(module: ModuleType) -> dict[str, type]:
    return {
        name: obj
        for name, obj in vars(module).items()
        if not name.startswith("_") and isinstance(obj, type) and obj.__module__ == module.__name__
    }


def public_members(cls: type) -> dict[str, Any]:
    """A class's public methods and properties, with __init__ (its own or a
    base class's: the pure twin's buffers inherit theirs)."""
    own_init = any("__init__" in vars(base) for base in cls.__mro__[:-1])
    return {
        name: getattr(cls, name)
        for name in dir(cls)
        if (name == "__init__" and own_init) or not name.startswith("_")
    }


def load_stub() -> ast.Module:
    text = resources.files("arraywire").joinpath("_core", "transport_c.pyi").read_text("utf-8")
    return ast.parse(text)


def stub_signature(node: ast.FunctionDef) -> inspect.Signature:
    """The signature a stub def declares, annotations kept as source text (as
    ``from __future__ import annotations`` keeps them in the pure module)."""
    empty = inspect.Parameter.empty
    args = node.args

    def param(arg: ast.arg, kind: Any, default: ast.expr | None) -> inspect.Parameter:
        return inspect.Parameter(
            arg.arg,
            kind,
            default=empty if default is None else ast.literal_eval(default),
            annotation=empty if arg.annotation is None else ast.unparse(arg.annotation),
        )

    positional = [(arg, inspect.Parameter.POSITIONAL_ONLY) for arg in args.posonlyargs]
    positional += [(arg, inspect.Parameter.POSITIONAL_OR_KEYWORD) for arg in args.args]
    # Defaults belong to the last positional parameters.
    defaults: list[ast.expr | None] = [None] * (len(positional) - len(args.defaults))
    defaults += args.defaults
    params = [
        param(arg, kind, default) for (arg, kind), default in zip(positional, defaults, strict=True)
    ]
    if args.vararg is not None:
        params.append(param(args.vararg, inspect.Parameter.VAR_POSITIONAL, None))
    params += [
        param(arg, inspect.Parameter.KEYWORD_ONLY, default)
        for arg, default in zip(args.kwonlyargs, args.kw_defaults, strict=True)
    ]
    if args.kwarg is not None:
        params.append(param(args.kwarg, inspect.Parameter.VAR_KEYWORD, None))
    returns = empty if node.returns is None else ast.unparse(node.returns)
    return inspect.Signature(params, return_annotation=returns)


def stub_functions(stub: ast.Module | ast.ClassDef) -> dict[str, inspect.Signature]:
    return {
        node.name: stub_signature(node) for node in stub.body if isinstance(node, ast.FunctionDef)
    }


def stub_classes(stub: ast.Module) -> dict[str, ast.ClassDef]:
    return {node.name: node for node in stub.body if isinstance(node, ast.ClassDef)}


def stub_variables(stub: ast.Module) -> dict[str, str]:
    return {
        node.target.id: ast.unparse(node.annotation)
        for node in stub.body
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
    }


def without_annotations(signature: inspect.Signature) -> inspect.Signature:
    return signature.replace(
        parameters=[
            p.replace(annotation=inspect.Parameter.empty) for p in signature.parameters.values()
        ],
        return_annotation=inspect.Signature.empty,
    )


PURE = public_functions(transport_py)
PURE_CLASSES = public_classes(transport_py)
STUB = load_stub()


def method_names(cls: type) -> list[str]:
    return sorted(public_members(cls))


def method_cases() -> list[tuple[str, str]]:
    return [(cls, name) for cls in sorted(PURE_CLASSES) for name in method_names(PURE_CLASSES[cls])]


def test_stub_declares_the_pure_functions() -> None:
    assert sorted(stub_functions(STUB)) == sorted(PURE)


@pytest.mark.parametrize("name", sorted(PURE))
def test_stub_signature_matches_pure(name: str) -> None:
    assert stub_functions(STUB)[name] == inspect.signature(PURE[name])


def test_stub_variables_exist_in_both_backends() -> None:
    variables = stub_variables(STUB)
    assert "BACKEND" in variables
    modules = [transport_py] if transport_c is None else [transport_py, transport_c]
    for module in modules:
        for name, annotation in variables.items():
            assert type(getattr(module, name)).__name__ == annotation


needs_compiled = pytest.mark.skipif(
    transport_c is None, reason="the compiled backend was not built"
)


@pytest.mark.c_extension
@needs_compiled
def test_compiled_declares_the_pure_functions() -> None:
    assert sorted(public_functions(transport_c)) == sorted(PURE)


@pytest.mark.c_extension
@needs_compiled
@pytest.mark.parametrize("name", sorted(PURE))
def test_compiled_signature_matches_pure(name: str) -> None:
    compiled = inspect.signature(getattr(transport_c, name))
    assert compiled == without_annotations(inspect.signature(PURE[name]))


def test_stub_declares_the_pure_classes() -> None:
    classes = stub_classes(STUB)
    assert sorted(classes) == sorted(PURE_CLASSES)
    for name, node in classes.items():
        assert sorted(stub_functions(node)) == method_names(PURE_CLASSES[name])


@pytest.mark.parametrize(("cls", "name"), method_cases())
def test_stub_method_matches_pure(cls: str, name: str) -> None:
    member = public_members(PURE_CLASSES[cls])[name]
    declared = stub_functions(stub_classes(STUB)[cls])[name]
    if isinstance(member, property):
        assert list(declared.parameters) == ["self"]
    else:
        assert declared == inspect.signature(member)


@pytest.mark.c_extension
@needs_compiled
@pytest.mark.parametrize(("cls", "name"), method_cases())
def test_compiled_method_matches_pure(cls: str, name: str) -> None:
    pure = public_members(PURE_CLASSES[cls])[name]
    compiled_cls = public_classes(transport_c)[cls]  # type: ignore[arg-type]
    assert method_names(compiled_cls) == method_names(PURE_CLASSES[cls]) or (
        sorted(set(method_names(compiled_cls)) - {"__init__"})
        == sorted(set(method_names(PURE_CLASSES[cls])) - {"__init__"})
    )
    if name == "__init__":
        return  # a compiled class takes its arguments in __cinit__
    compiled = getattr(compiled_cls, name)
    if isinstance(pure, property):
        assert inspect.isdatadescriptor(compiled)
    else:
        assert inspect.signature(compiled) == without_annotations(inspect.signature(pure))
