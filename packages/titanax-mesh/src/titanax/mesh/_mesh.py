"""``MeshSpec``: a declared device mesh, validated before it is built.

A mesh is a named, n-dimensional arrangement of devices (``jax.sharding.Mesh``). Every layout in
Titanax refers to its axes by name. ``MeshSpec`` is the JSON-safe declaration; ``build()`` turns
it into the JAX object with a device order chosen for the platform.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal, TypeAlias

import jax
import numpy as np

from titanax.mesh._errors import MeshError

__all__ = ["AxisTypeName", "MeshSpec"]

logger = logging.getLogger(__name__)

AxisTypeName: TypeAlias = Literal["auto", "explicit"]
_AXIS_TYPES: dict[str, AxisTypeName] = {"auto": "auto", "explicit": "explicit"}


def _normalize_axis_type(value: object, *, axis: str) -> AxisTypeName:
    if isinstance(value, jax.sharding.AxisType):
        value = value.name
    if isinstance(value, str) and value.lower() in _AXIS_TYPES:
        return _AXIS_TYPES[value.lower()]
    raise MeshError(
        f"MeshSpec: axis type {value!r} for axis {axis!r} is not one of 'auto' or 'explicit' "
        "(or jax.sharding.AxisType.Auto / .Explicit). Pass axis_types='auto' for all axes."
    )


def _jax_axis_type(name: AxisTypeName) -> jax.sharding.AxisType:
    return jax.sharding.AxisType.Explicit if name == "explicit" else jax.sharding.AxisType.Auto


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class MeshSpec:
    """A named device mesh, declared and validated before it is built.

    ``shape`` gives one size per axis; at most one entry may be ``-1``, which is inferred from the
    device count (``MeshSpec(axes=("data", "tensor"), shape=(-1, 2))`` on 8 devices is
    ``data=4, tensor=2``). Without a ``-1`` the product of the sizes must equal the device count.

    Axis types follow ``jax.sharding.AxisType``: ``"auto"`` lets the XLA partitioner propagate
    shardings through the step (the usual ``jax.jit`` global view); ``"explicit"`` makes
    shardings part of array types (``jax.typeof(x).sharding``). The type is always passed to JAX
    explicitly, so the mesh means the same on every JAX version.

    For meshes that span hosts, ``across_hosts`` splits each axis into an across-host factor (the
    slow network between hosts) and a within-host factor (``size // across_hosts``), and
    ``build()`` orders devices with ``jax.experimental.mesh_utils.create_hybrid_device_mesh`` so
    that within-host factors map to fast links — MaxText's ``ici``/``dcn`` parallelism split.

    Args:
      axes: axis names, e.g. ``("data", "tensor")``; non-empty, unique identifiers.
      shape: one size per axis; positive ints and at most one ``-1``.
      devices: ``"all"`` (every device of ``jax.devices()``), a count ``n`` (the first ``n``), or
        an explicit sequence of ``jax.Device``.
      axis_types: ``"auto"`` or ``"explicit"`` for all axes, or one per axis. Default ``"auto"``.
      across_hosts: optional across-host factor per axis; each must divide its axis size and
        their product must equal the number of processes whose devices form the mesh.

    Raises:
      MeshError: at construction for an invalid declaration, at ``build()``/``resolve()`` when
        the shape does not fit the devices — the message names the values and the fix.

    Example:
      >>> spec = MeshSpec(axes=("data", "tensor"), shape=(-1, 2))
      >>> mesh = spec.build()  # on 8 CPU devices
      >>> dict(mesh.shape)
      {'data': 4, 'tensor': 2}

    References:
      ``jax.sharding.Mesh``, ``jax.sharding.AxisType``, ``jax.experimental.mesh_utils``.
    """

    axes: tuple[str, ...]
    shape: tuple[int, ...]
    devices: Literal["all"] | int | tuple[Any, ...] = "all"
    axis_types: AxisTypeName | tuple[AxisTypeName, ...] = "auto"
    across_hosts: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        axes = self.axes
        if isinstance(axes, str) or not isinstance(axes, Sequence):
            raise MeshError(
                f"MeshSpec: axes must be a sequence of names such as ('data', 'tensor'), "
                f"got {axes!r}."
            )
        axes = tuple(axes)
        if not axes:
            raise MeshError(
                "MeshSpec: axes is empty; a mesh needs at least one named axis, "
                "e.g. MeshSpec(axes=('data',), shape=(-1,))."
            )
        for name in axes:
            if not isinstance(name, str) or not name.isidentifier():
                raise MeshError(
                    f"MeshSpec(axes={axes!r}): axis name {name!r} is not a Python identifier; "
                    "use names such as 'data', 'fsdp', 'tensor', 'pipeline'."
                )
        duplicates = sorted({a for a in axes if axes.count(a) > 1})
        if duplicates:
            raise MeshError(
                f"MeshSpec(axes={axes!r}): duplicate axis names {duplicates}; every axis needs "
                "its own name."
            )
        shape = self.shape
        if isinstance(shape, int) or not isinstance(shape, Sequence):
            raise MeshError(
                f"MeshSpec(axes={axes!r}): shape must be a sequence of sizes, got {shape!r}."
            )
        shape = tuple(shape)
        if len(shape) != len(axes):
            raise MeshError(
                f"MeshSpec(axes={axes!r}, shape={shape!r}): {len(axes)} axes but {len(shape)} "
                "sizes; give exactly one size per axis."
            )
        for name, size in zip(axes, shape, strict=True):
            if isinstance(size, bool) or not isinstance(size, int | np.integer):
                raise MeshError(
                    f"MeshSpec(axes={axes!r}, shape={shape!r}): size of axis {name!r} is "
                    f"{size!r}, not an int."
                )
            if size == 0 or size < -1:
                raise MeshError(
                    f"MeshSpec(axes={axes!r}, shape={shape!r}): axis {name!r} has size {size}; "
                    "sizes must be positive, or -1 (once) to infer from the device count."
                )
        shape = tuple(int(s) for s in shape)
        if shape.count(-1) > 1:
            raise MeshError(
                f"MeshSpec(axes={axes!r}, shape={shape!r}): more than one -1; at most one axis "
                "size can be inferred from the device count. Give the other sizes explicitly."
            )
        object.__setattr__(self, "axes", axes)
        object.__setattr__(self, "shape", shape)
        object.__setattr__(self, "axis_types", self._normalized_axis_types())
        object.__setattr__(self, "devices", self._normalized_devices())
        if self.across_hosts is not None:
            object.__setattr__(self, "across_hosts", self._normalized_across_hosts())

    # -- normalization -------------------------------------------------------------------------

    def _normalized_axis_types(self) -> tuple[AxisTypeName, ...]:
        types = self.axis_types
        if isinstance(types, str | jax.sharding.AxisType):
            one = _normalize_axis_type(types, axis="*")
            return (one,) * len(self.axes)
        if not isinstance(types, Sequence) or len(types) != len(self.axes):
            raise MeshError(
                f"MeshSpec(axes={self.axes!r}): axis_types={types!r} must be one type for all "
                f"axes or a sequence of {len(self.axes)} types."
            )
        return tuple(_normalize_axis_type(t, axis=a) for a, t in zip(self.axes, types, strict=True))

    def _normalized_devices(self) -> Literal["all"] | int | tuple[Any, ...]:
        devices = self.devices
        if isinstance(devices, str):
            if devices != "all":
                raise MeshError(
                    f"MeshSpec: devices={devices!r} is not understood; pass 'all', a device "
                    "count, or a sequence of jax devices."
                )
            return "all"
        if isinstance(devices, bool):
            raise MeshError(f"MeshSpec: devices={devices!r} is a bool, not a device count.")
        if isinstance(devices, int | np.integer):
            if devices <= 0:
                raise MeshError(
                    f"MeshSpec: devices={devices} must be a positive device count (or 'all')."
                )
            return int(devices)
        if isinstance(devices, np.ndarray):
            devices = tuple(devices.flat)
        if not isinstance(devices, Sequence) or not devices:
            raise MeshError(
                f"MeshSpec: devices={devices!r} must be 'all', a positive count, or a non-empty "
                "sequence of jax devices."
            )
        devices = tuple(devices)
        ids = [getattr(d, "id", None) for d in devices]
        if any(i is None for i in ids):
            raise MeshError(
                f"MeshSpec: devices contains {devices!r}, which are not all jax devices "
                "(objects with an .id); pass jax.devices() entries."
            )
        if len(set(ids)) != len(ids):
            raise MeshError(f"MeshSpec: devices lists device ids {ids} with repeats.")
        return devices

    def _normalized_across_hosts(self) -> tuple[int, ...]:
        across = self.across_hosts
        if not isinstance(across, Sequence) or len(across) != len(self.axes):
            raise MeshError(
                f"MeshSpec(axes={self.axes!r}): across_hosts={across!r} needs one factor per axis."
            )
        factors = tuple(across)
        for name, size, factor in zip(self.axes, self.shape, factors, strict=True):
            if isinstance(factor, bool) or not isinstance(factor, int | np.integer) or factor < 1:
                raise MeshError(
                    f"MeshSpec(axes={self.axes!r}): across_hosts factor {factor!r} of axis "
                    f"{name!r} must be a positive int."
                )
            if size != -1 and size % factor:
                raise MeshError(
                    f"MeshSpec(axes={self.axes!r}, shape={self.shape!r}): axis {name!r} of size "
                    f"{size} does not divide into across_hosts={factor}; the across-host factor "
                    "must divide the axis size."
                )
        return tuple(int(f) for f in factors)

    # -- resolution ----------------------------------------------------------------------------

    def _device_list(self) -> list[Any]:
        available = jax.devices()
        if self.devices == "all":
            return list(available)
        if isinstance(self.devices, int):
            if self.devices > len(available):
                raise MeshError(
                    f"MeshSpec: devices={self.devices} but only {len(available)} "
                    f"{available[0].platform} devices exist. Use devices='all' or a count "
                    f"<= {len(available)} (on CPU, simulate more with "
                    "jax.config.update('jax_num_cpu_devices', n) before JAX starts)."
                )
            return list(available[: self.devices])
        known = {d.id: d for d in available}
        unknown = [d for d in self.devices if known.get(d.id) is not d]
        if unknown:
            raise MeshError(
                f"MeshSpec: devices {unknown!r} are not among jax.devices() "
                f"(ids {sorted(known)}); pass devices from this process's jax.devices()."
            )
        return list(self.devices)

    def resolved_shape(self, num_devices: int) -> tuple[int, ...]:
        """Returns the concrete shape on ``num_devices`` devices (``-1`` filled in).

        Args:
          num_devices: number of devices the mesh will span.

        Returns:
          One positive size per axis whose product is ``num_devices``.

        Raises:
          MeshError: the known sizes do not divide ``num_devices`` (with ``-1``) or their
            product differs from it (without) — the message lists sizes that would fit.
        """
        known = math.prod(s for s in self.shape if s != -1)
        fits = [d for d in range(1, num_devices + 1) if num_devices % d == 0]
        where = f"MeshSpec(axes={self.axes!r}, shape={self.shape!r})"
        if -1 in self.shape:
            if num_devices % known:
                bad = ", ".join(
                    f"{a}={s}" for a, s in zip(self.axes, self.shape, strict=True) if s != -1
                )
                raise MeshError(
                    f"{where} cannot be built on {num_devices} devices: {num_devices} is not "
                    f"divisible by {bad} (product {known}). Use sizes whose product divides "
                    f"{num_devices} (divisors: {fits}) or pass devices=."
                )
            shape = tuple(num_devices // known if s == -1 else s for s in self.shape)
        else:
            if known != num_devices:
                subset = (
                    f", or pass devices={known} to use a subset"
                    if known < num_devices and num_devices % known == 0
                    else ""
                )
                raise MeshError(
                    f"{where} cannot be built on {num_devices} devices: the sizes multiply to "
                    f"{known}, not {num_devices}. Make the product equal {num_devices} or put -1 "
                    f"in one axis to infer it{subset}."
                )
            shape = self.shape
        if self.across_hosts is not None:
            for name, size, factor in zip(self.axes, shape, self.across_hosts, strict=True):
                if size % factor:
                    raise MeshError(
                        f"{where} on {num_devices} devices: axis {name!r} resolves to {size}, "
                        f"which does not divide into across_hosts={factor}."
                    )
        return shape

    def resolve(self) -> MeshSpec:
        """Returns a copy with ``-1`` replaced by the size inferred from the visible devices.

        Raises:
          MeshError: as :meth:`resolved_shape`, or for unknown devices.
        """
        shape = self.resolved_shape(len(self._device_list()))
        return dataclasses.replace(self, shape=shape)

    def build(self) -> jax.sharding.Mesh:
        """Builds the ``jax.sharding.Mesh`` with a device order suited to the platform.

        Single host: ``mesh_utils.create_device_mesh`` (topology-aware on TPU and GPU; on CPU the
        order of ``jax.devices()``). With ``across_hosts``: ``create_hybrid_device_mesh`` with
        processes (or TPU slices) as the across-host granules. Axis types are always passed.

        Returns:
          ``jax.sharding.Mesh`` with ``axis_names == self.axes`` and the resolved shape.

        Raises:
          MeshError: the shape does not fit the devices, unknown devices, or an ``across_hosts``
            split that does not match the number of hosts.
        """
        from jax.experimental import mesh_utils

        devices = self._device_list()
        shape = self.resolved_shape(len(devices))
        if self.across_hosts is not None:
            within = tuple(s // f for s, f in zip(shape, self.across_hosts, strict=True))
            platform = devices[0].platform
            use_slices = platform == "tpu" and hasattr(devices[0], "slice_index")
            granules = {d.slice_index if use_slices else d.process_index for d in devices}
            if math.prod(self.across_hosts) != len(granules):
                raise MeshError(
                    f"MeshSpec(axes={self.axes!r}, across_hosts={self.across_hosts!r}): the "
                    f"across-host factors multiply to {math.prod(self.across_hosts)} but the "
                    f"devices come from {len(granules)} "
                    f"{'slices' if use_slices else 'processes'}. Make the product equal "
                    f"{len(granules)}, or drop across_hosts on a single host."
                )
            array = mesh_utils.create_hybrid_device_mesh(
                within,
                self.across_hosts,
                devices,
                process_is_granule=not use_slices,
                allow_split_physical_axes=True,
            )
        else:
            try:
                array = mesh_utils.create_device_mesh(
                    shape, devices, allow_split_physical_axes=True
                )
            except (ValueError, NotImplementedError, AssertionError) as err:
                # Topology-aware placement is an optimization; a device subset it cannot place
                # (e.g. part of a TPU slice) still gets a correct mesh in process/id order.
                logger.info("create_device_mesh(%s) declined (%s); using id order.", shape, err)
                ordered = sorted(devices, key=lambda d: (d.process_index, d.id))
                array = np.asarray(ordered, dtype=object).reshape(shape)
        types = tuple(_jax_axis_type(t) for t in self.axis_types_tuple)
        return jax.sharding.Mesh(array, self.axes, axis_types=types)

    # -- inspection and serialization ----------------------------------------------------------

    @property
    def axis_types_tuple(self) -> tuple[AxisTypeName, ...]:
        """The axis type of each axis, in axis order (normalized at construction)."""
        types = self.axis_types
        return (types,) * len(self.axes) if isinstance(types, str) else tuple(types)

    @classmethod
    def from_mesh(cls, mesh: jax.sharding.Mesh) -> MeshSpec:
        """Returns the concrete spec of a built mesh (sizes, axis types; ``devices`` as a count).

        Used for checkpoint metadata: the result's ``to_dict()`` records the layout that ran.
        """
        types: tuple[AxisTypeName, ...] = tuple(
            _normalize_axis_type(t, axis=a)
            for a, t in zip(mesh.axis_names, mesh.axis_types, strict=True)
        )
        return cls(
            axes=tuple(str(a) for a in mesh.axis_names),
            shape=tuple(int(s) for s in mesh.devices.shape),
            devices=int(mesh.devices.size),
            axis_types=types,
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe record: axes, shape (as declared), devices, axis types, across_hosts.

        Explicit device lists are stored as device ids. ``from_dict(to_dict())`` round-trips.
        """
        devices: Any = self.devices
        if isinstance(devices, tuple):
            devices = [int(d.id) for d in devices]
        return {
            "axes": list(self.axes),
            "shape": list(self.shape),
            "devices": devices,
            "axis_types": list(self.axis_types_tuple),
            "across_hosts": None if self.across_hosts is None else list(self.across_hosts),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> MeshSpec:
        """Inverse of :meth:`to_dict`; device ids are looked up in ``jax.devices()``.

        Raises:
          MeshError: a missing or unknown key, or a device id that does not exist here.
        """
        allowed = {"axes", "shape", "devices", "axis_types", "across_hosts"}
        if not isinstance(data, Mapping):
            raise MeshError(f"MeshSpec.from_dict: expected a mapping, got {type(data).__name__}.")
        unknown = sorted(set(data) - allowed)
        missing = sorted({"axes", "shape"} - set(data))
        if unknown or missing:
            raise MeshError(
                f"MeshSpec.from_dict: unknown keys {unknown}, missing keys {missing}; "
                f"allowed keys are {sorted(allowed)}."
            )
        devices = data.get("devices", "all")
        if isinstance(devices, list):
            by_id = {d.id: d for d in jax.devices()}
            missing_ids = [i for i in devices if i not in by_id]
            if missing_ids:
                raise MeshError(
                    f"MeshSpec.from_dict: device ids {missing_ids} do not exist here "
                    f"(have {sorted(by_id)})."
                )
            devices = tuple(by_id[i] for i in devices)
        across = data.get("across_hosts")
        types: Any = data.get("axis_types", "auto")
        types = types if isinstance(types, str) else tuple(types)
        return cls(
            axes=tuple(data["axes"]),
            shape=tuple(data["shape"]),
            devices=devices,
            axis_types=types,
            across_hosts=None if across is None else tuple(across),
        )

    def describe(self, mesh: jax.sharding.Mesh | None = None) -> str:
        """Returns a readable table of the mesh: axes, sizes, types, host split, devices.

        Args:
          mesh: an already built mesh of this spec; built from the spec when ``None``.

        Returns:
          Multi-line text (rendered with ``rich``, no colour codes).

        Raises:
          MeshError: as :meth:`build` when ``mesh`` is ``None`` and the spec does not fit.
        """
        from rich.console import Console
        from rich.table import Table

        mesh = self.build() if mesh is None else mesh
        if tuple(mesh.axis_names) != self.axes:
            raise MeshError(
                f"MeshSpec.describe: the mesh has axes {tuple(mesh.axis_names)}, this spec "
                f"{self.axes}; pass the mesh built from this spec (or none)."
            )
        flat = list(mesh.devices.flat)
        processes = sorted({d.process_index for d in flat})
        title = (
            f"Mesh {' × '.join(f'{a}={s}' for a, s in mesh.shape.items())} — {len(flat)} "
            f"{flat[0].platform} devices ({flat[0].device_kind}), {len(processes)} process(es)"
        )
        table = Table(title=title, title_justify="left")
        for column in ("axis", "size", "type", "within host", "across hosts"):
            table.add_column(column, justify="left" if column in ("axis", "type") else "right")
        across = self.across_hosts or (1,) * len(self.axes)
        for name, size, kind, factor in zip(
            self.axes, mesh.devices.shape, self.axis_types_tuple, across, strict=True
        ):
            table.add_row(name, str(size), kind, str(size // factor), str(factor))
        buffer = io.StringIO()
        console = Console(file=buffer, width=100, color_system=None, force_terminal=False)
        console.print(table)
        ids = np.vectorize(lambda d: d.id)(mesh.devices)
        if ids.ndim <= 2 and ids.size <= 64:
            console.print(f"device ids ({' × '.join(self.axes)}):\n{ids}")
        return buffer.getvalue().rstrip() + "\n"
