"""``model.kind: flax_nnx``: a user's Flax NNX module, split into graph and parameter state.

The class named by ``model.module`` is imported (from a file, relative to the config, or a
module), built abstractly once with ``nnx.eval_shape`` to get its graph definition, and then
used functionally: ``init(key)`` builds ``Class(**kwargs, rngs=nnx.Rngs(key))`` and returns its
``nnx.Param`` state as a nested dict (the tree the plan lays out — paths such as
``blocks/0/attn/query/kernel``, as ``nnx.split`` names them), and the loss runs
``nnx.merge(graph, params)(inputs)``. Both are pure, so they trace under ``jax.eval_shape``,
``jax.jit`` with the plan's shardings and ``jax.shard_map`` like any Titanax model.

Problems (flax missing, a file or class that is not there, a constructor that rejects the
kwargs, state that is not all ``nnx.Param``) are :class:`~titanax.cli.ConfigError` problems at
``model.module`` / ``model.kwargs``.

References:
  Flax NNX, "The Flax NNX functional API" (``nnx.split``, ``nnx.merge``, ``nnx.eval_shape``),
  https://flax.readthedocs.io/en/latest/nnx_basics.html.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import math
import pathlib
import sys
from collections.abc import Mapping
from typing import Any

import jax

from titanax.cli._config import FlaxNNXModel
from titanax.cli._errors import ConfigError, Problem

__all__ = ["flax_nnx_parts", "load_class"]


def _problem(field: str, message: str) -> ConfigError:
    return ConfigError([Problem(path=f"model.{field}", message=message)])


def load_class(spec: str, *, base_dir: pathlib.Path | None = None) -> type:
    """The class named by ``spec``: ``file.py:Name`` (relative to ``base_dir``) or ``pkg.mod:Name``.

    A file is imported once per resolved path, as a module named after its path's hash (it is
    put in ``sys.modules`` so its dataclasses and pickling work).

    Raises:
      ConfigError: the file or module cannot be imported, or has no such class.
    """
    where, _, name = spec.rpartition(":")
    if where.endswith(".py") or "/" in where or "\\" in where:
        path = pathlib.Path(where).expanduser()
        if not path.is_absolute() and base_dir is not None:
            path = base_dir / path
        path = path.resolve()
        if not path.is_file():
            raise _problem(
                "module",
                f"{spec!r}: no file {str(path)!r} (a relative path is read from the config "
                "file's directory).",
            )
        module_name = "titanax_user_model_" + hashlib.sha256(str(path).encode()).hexdigest()[:12]
        module = sys.modules.get(module_name)
        if module is None:
            loader_spec = importlib.util.spec_from_file_location(module_name, path)
            if loader_spec is None or loader_spec.loader is None:
                raise _problem("module", f"{spec!r}: {str(path)!r} cannot be imported.")
            module = importlib.util.module_from_spec(loader_spec)
            sys.modules[module_name] = module
            try:
                loader_spec.loader.exec_module(module)
            except Exception as err:
                del sys.modules[module_name]
                raise _problem(
                    "module",
                    f"{spec!r}: importing {str(path)!r} raised {type(err).__name__}: {err}",
                ) from err
    else:
        try:
            module = importlib.import_module(where)
        except ImportError as err:
            raise _problem(
                "module",
                f"{spec!r}: cannot import module {where!r} ({err}); use path/to/file.py:{name} "
                "for a file.",
            ) from err
    found = getattr(module, name, None)
    if not isinstance(found, type):
        classes = sorted(k for k, v in vars(module).items() if isinstance(v, type))
        raise _problem(
            "module",
            f"{spec!r}: {where!r} has no class {name!r} (classes there: {', '.join(classes)}).",
        )
    return found


def _nnx() -> Any:
    try:
        from flax import nnx
    except ImportError as err:
        raise _problem(
            "kind", "flax_nnx needs Flax (0.12 or newer): pip install 'titanax-cli[flax]'."
        ) from err
    return nnx


def flax_nnx_parts(
    model: FlaxNNXModel, *, base_dir: pathlib.Path | None = None
) -> tuple[Any, Any, str]:
    """``(init, apply, summary)`` of a Flax NNX model.

    Args:
      model: the ``model`` section.
      base_dir: the directory relative file paths in ``model.module`` are read from.

    Returns:
      ``init(key) -> params`` (nested dict of the ``nnx.Param`` state), ``apply(params, x) ->
      logits`` and a one-line summary.

    Raises:
      ConfigError: Flax is missing, the class cannot be loaded or built with ``kwargs``, it is
        not an ``nnx.Module``, or it holds state other than ``nnx.Param``.
    """
    nnx = _nnx()
    cls = load_class(model.module, base_dir=base_dir)
    if not issubclass(cls, nnx.Module):
        raise _problem(
            "module", f"{model.module!r} is {cls.__qualname__}, not a flax.nnx.Module subclass."
        )
    kwargs = dict(model.kwargs)

    def build(key: Any) -> Any:
        return cls(**kwargs, rngs=nnx.Rngs(key))

    try:
        abstract = nnx.eval_shape(lambda: build(0))
    except Exception as err:  # the user's constructor: any error is a problem of the kwargs
        raise _problem(
            "kwargs",
            f"{cls.__qualname__}(**kwargs, rngs=...) rejected them: {type(err).__name__}: {err}",
        ) from err
    graph, params, rest = nnx.split(abstract, nnx.Param, ...)
    others = {"/".join(map(str, path)): type(v).__name__ for path, v in nnx.to_flat_state(rest)}
    if others:
        listed = ", ".join(f"{path} ({kind})" for path, kind in sorted(others.items())[:4])
        raise _problem(
            "module",
            f"{model.module!r} holds state that is not nnx.Param: {listed}"
            + (", ..." if len(others) > 4 else "")
            + ". The flax_nnx kind trains parameter-only models (no batch statistics, RNG "
            "streams or caches in the module).",
        )
    count = sum(math.prod(x.shape) for x in jax.tree.leaves(params))

    def init(key: jax.Array) -> Any:
        _, state = nnx.split(build(key), nnx.Param)
        return nnx.to_pure_dict(state)

    def apply(params: Mapping[str, Any], x: jax.Array) -> jax.Array:
        logits: jax.Array = nnx.merge(graph, params)(x)
        return logits

    summary = (
        f"model: Flax NNX {cls.__qualname__} ({model.module}), {count / 1e6:.2f}M parameters, "
        f"task {model.task}, kwargs {kwargs}"
    )
    return init, apply, summary
