"""Griffe extension: Titanax's docstring conventions rendered well by mkdocstrings.

The project's docstrings follow CONVENTIONS.md (Google style with a few Sphinx habits). Three
things need help to render, all done here so the code keeps its conventions:

* ``Example:`` sections. Griffe's Google parser only knows the plural ``Examples:`` as an
  examples section (``>>>`` lines become highlighted ``pycon`` blocks); a singular ``Example:``
  would be an admonition whose ``>>>`` lines are read as Markdown. Top-level ``Example:``
  headers are renamed before parsing.
* Sphinx roles (``:class:`~titanax.mesh.MeshSpec```, ``:func:`step_fn```, ``:meth:`build```).
  Each becomes a cross-reference to the documented public object when it resolves — relative
  names are looked up on the enclosing class, then the public module — and inline code
  otherwise (private modules, objects outside the API), so no link can break.
* Dunder methods. Members are filtered with griffe's notion of public (``__all__`` of every
  module), which counts every special method as public; only those that are part of an API
  (calling a step, concatenating ``Rules``, batched reads, the version) stay visible.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_EXAMPLE_HEADER = re.compile(r"^Example:[ \t]*$", flags=re.MULTILINE)
_ROLE = re.compile(r":(?:class|func|meth|attr|data|mod|exc|obj|const):`(~?)([A-Za-z_][\w.]*)`")
_PUBLIC_DUNDERS = {"__init__", "__call__", "__or__", "__getitems__", "__version__", "__all__"}


def _is_dunder(name: str) -> bool:
    return name.startswith("__") and name.endswith("__")


def _public_path(obj: griffe.Object) -> str:
    """Where ``obj`` is documented: its path with the private module components dropped.

    ``titanax.io._token_windows.TokenWindows.from_file`` -> ``titanax.io.TokenWindows.from_file``.
    """
    parts = obj.path.split(".")
    return ".".join(p for p in parts if not (p.startswith("_") and not _is_dunder(p)))


def _public_module(obj: griffe.Object) -> str:
    """The public module ``obj`` is exported from (``titanax.io``, ``titanax.mesh.collectives``)."""
    module = obj if obj.is_module else obj.module
    parts = module.path.split(".")
    kept: list[str] = []
    for part in parts:
        if part.startswith("_"):
            break
        kept.append(part)
    return ".".join(kept)


class TitanaxDocstrings(griffe.Extension):
    """Renders ``Example:``, Sphinx roles and dunder members as described in the module."""

    def __init__(self) -> None:
        super().__init__()
        self._collection: Any = None

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        """Renames top-level ``Example:`` sections before the docstring is parsed."""
        if obj.docstring is not None:
            obj.docstring.value = _EXAMPLE_HEADER.sub("Examples:", obj.docstring.value)

    def on_package(self, *, pkg: griffe.Module, loader: griffe.GriffeLoader, **kwargs: Any) -> None:
        """Rewrites the Sphinx roles of every docstring and drops the dunder members that are
        not part of an API, once the package is loaded (aliases see the same objects)."""
        self._collection = loader.modules_collection
        self._visit(pkg)

    # -- helpers ---------------------------------------------------------------------------------

    def _visit(self, obj: griffe.Object) -> None:
        if obj.docstring is not None and ":" in obj.docstring.value:
            obj.docstring.value = _ROLE.sub(lambda m: self._role(obj, m), obj.docstring.value)
        if obj.is_class:
            for name in [n for n in obj.members if _is_dunder(n) and n not in _PUBLIC_DUNDERS]:
                obj.del_member(name)
        for member in list(obj.members.values()):
            if not member.is_alias:
                self._visit(member)

    def _documented(self, path: str) -> bool:
        """Whether ``path`` names an object the API pages document (public all the way down)."""
        parts = path.split(".")
        if parts[0] != "titanax" or any(
            p.startswith("_") and p not in _PUBLIC_DUNDERS for p in parts
        ):
            return False
        try:
            target = self._collection[path]
        except Exception:  # KeyError, alias resolution errors: not an object we document
            return False
        parent = target.parent
        if parent is not None and parent.is_module and parent.exports:
            return target.name in parent.exports or target.is_module
        return True

    def _role(self, obj: griffe.Object, match: re.Match[str]) -> str:
        short, name = match.group(1) == "~", match.group(2)
        label = name.rsplit(".", 1)[-1] if short else name
        candidates = [name] if name.startswith("titanax.") else []
        if not candidates:
            scope = obj if obj.is_class else obj.parent if obj.parent is not None else obj
            if scope.is_class:
                candidates.append(f"{_public_path(scope)}.{name}")
            candidates.append(f"{_public_module(obj)}.{name}")
            package = ".".join(_public_module(obj).split(".")[:2])
            candidates.append(f"{package}.{name}")
        for candidate in candidates:
            if self._documented(candidate):
                return f"[`{label}`][{candidate}]"
        return f"`{label}`"
