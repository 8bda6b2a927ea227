"""Every collective against a numpy reference on 8 simulated CPU devices.

The input ``X`` is a global array sharded on dim 0 over the axis, so device ``i`` holds block
``xs[i] = X[i*b:(i+1)*b]``. Each collective runs inside ``jax.shard_map``; its per-device result
is stacked (``out_specs=P(axis)`` on a new leading dim) and compared, device by device, with the
numpy reference computed from ``xs``. Gradients are checked against the exact transpose of the
(linear) numpy reference, built column by column.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from titanax.mesh import CollectiveError, MeshSpec, collectives

N = 8
RNG = np.random.default_rng(0)


@pytest.fixture(scope="module")
def mesh() -> jax.sharding.Mesh:
    return MeshSpec(axes=("data",), shape=(N,)).build()


@pytest.fixture(scope="module")
def mesh2d() -> jax.sharding.Mesh:
    return MeshSpec(axes=("data", "tensor"), shape=(4, 2)).build()


def per_device(
    mesh: jax.sharding.Mesh, fn: Callable[[jax.Array], Any], check_vma: bool
) -> Callable[[jax.Array], jax.Array]:
    """Global function whose output stacks each device's result on a new leading dim."""
    axis = mesh.axis_names[0]
    return jax.jit(
        jax.shard_map(
            lambda x: fn(x)[None],
            mesh=mesh,
            in_specs=P(axis),
            out_specs=P(axis),
            check_vma=check_vma,
        )
    )


def blocks(X: np.ndarray) -> list[np.ndarray]:
    return np.split(X, N, axis=0)


def run(mesh: jax.sharding.Mesh, fn: Any, X: np.ndarray, check_vma: bool) -> np.ndarray:
    return np.asarray(per_device(mesh, fn, check_vma)(jnp.asarray(X)))


VMA = pytest.mark.parametrize("check_vma", [True, False], ids=["vma", "novma"])


@VMA
@pytest.mark.parametrize(
    ("name", "ref"),
    [
        ("psum", lambda xs: np.sum(xs, axis=0)),
        ("pmean", lambda xs: np.mean(xs, axis=0)),
        ("pmax", lambda xs: np.max(xs, axis=0)),
        ("pmin", lambda xs: np.min(xs, axis=0)),
    ],
)
def test_reductions(mesh: jax.sharding.Mesh, name: str, ref: Any, check_vma: bool) -> None:
    X = RNG.standard_normal((N * 2, 3)).astype(np.float32)
    out = run(mesh, lambda x: getattr(collectives, name)(x, "data"), X, check_vma)
    expected = ref(np.stack(blocks(X)))
    for i in range(N):
        np.testing.assert_allclose(out[i], expected, rtol=1e-6, atol=1e-6)


@VMA
@pytest.mark.parametrize("tiled", [True, False])
@pytest.mark.parametrize("gather_dim", [0, 1, -1])
def test_all_gather(mesh: jax.sharding.Mesh, tiled: bool, gather_dim: int, check_vma: bool) -> None:
    X = RNG.standard_normal((N * 2, 3)).astype(np.float32)
    out = run(
        mesh,
        lambda x: collectives.all_gather(x, "data", tiled=tiled, gather_dim=gather_dim),
        X,
        check_vma,
    )
    xs = blocks(X)
    expected = np.concatenate(xs, axis=gather_dim) if tiled else np.stack(xs, axis=gather_dim % 3)
    for i in range(N):
        np.testing.assert_array_equal(out[i], expected)


@VMA
@pytest.mark.parametrize("scatter_dim", [0, 1])
def test_reduce_scatter_tiled(mesh: jax.sharding.Mesh, scatter_dim: int, check_vma: bool) -> None:
    X = RNG.standard_normal((N * N, 2 * N)).astype(np.float32)
    out = run(
        mesh,
        lambda x: collectives.reduce_scatter(x, "data", tiled=True, scatter_dim=scatter_dim),
        X,
        check_vma,
    )
    total = np.sum(np.stack(blocks(X)), axis=0)
    parts = np.split(total, N, axis=scatter_dim)
    for i in range(N):
        np.testing.assert_allclose(out[i], parts[i], rtol=1e-5, atol=1e-5)


@VMA
def test_reduce_scatter_untiled(mesh: jax.sharding.Mesh, check_vma: bool) -> None:
    X = RNG.standard_normal((N * 3, N, 2)).astype(np.float32)
    out = run(
        mesh,
        lambda x: collectives.reduce_scatter(x, "data", tiled=False, scatter_dim=1),
        X,
        check_vma,
    )
    total = np.sum(np.stack(blocks(X)), axis=0)
    for i in range(N):
        np.testing.assert_allclose(out[i], total[:, i, :], rtol=1e-5, atol=1e-5)


def all_to_all_reference(xs: list[np.ndarray], split: int, concat: int) -> list[np.ndarray]:
    """Device i receives block i of every device's split dim, concatenated by source index."""
    return [
        np.concatenate([np.split(xs[j], N, axis=split)[i] for j in range(N)], axis=concat)
        for i in range(N)
    ]


@VMA
@pytest.mark.parametrize(("split", "concat"), list(itertools.product(range(3), repeat=2)))
def test_all_to_all_every_split_concat_pair(
    mesh: jax.sharding.Mesh, split: int, concat: int, check_vma: bool
) -> None:
    per_device_shape = (N, N, N)
    X = RNG.standard_normal((N * per_device_shape[0], *per_device_shape[1:])).astype(np.float32)
    out = run(
        mesh,
        lambda x: collectives.all_to_all(x, "data", split_dim=split, concat_dim=concat),
        X,
        check_vma,
    )
    expected = all_to_all_reference(blocks(X), split, concat)
    for i in range(N):
        np.testing.assert_array_equal(out[i], expected[i])


@VMA
def test_ppermute_broadcast_axis_index(mesh: jax.sharding.Mesh, check_vma: bool) -> None:
    X = RNG.standard_normal((N, 4)).astype(np.float32)
    xs = blocks(X)
    shift = [(i, (i + 1) % N) for i in range(N)]
    out = run(mesh, lambda x: collectives.ppermute(x, "data", shift), X, check_vma)
    for i in range(N):
        np.testing.assert_array_equal(out[i], xs[(i - 1) % N])
    out = run(mesh, lambda x: collectives.broadcast(x, "data", source=3), X, check_vma)
    for i in range(N):
        np.testing.assert_array_equal(out[i], xs[3])
    out = run(
        mesh,
        lambda x: jnp.full(
            (1,), collectives.axis_index("data") * 100 + collectives.axis_size("data")
        ),
        X,
        check_vma,
    )
    np.testing.assert_array_equal(out.ravel(), [i * 100 + N for i in range(N)])


def test_partial_permutation_zero_fills(mesh: jax.sharding.Mesh) -> None:
    X = np.arange(N, dtype=np.float32).reshape(N, 1) + 1
    out = run(mesh, lambda x: collectives.ppermute(x, "data", [(0, 5), (5, 0)]), X, True)
    expected = np.zeros(N)
    expected[5], expected[0] = 1, 6
    np.testing.assert_array_equal(out.ravel(), expected)


@VMA
def test_all_gather_of_reduce_scatter_is_psum(mesh: jax.sharding.Mesh, check_vma: bool) -> None:
    X = RNG.standard_normal((N * 2 * N, 3)).astype(np.float32)

    def both(x: jax.Array) -> jax.Array:
        scattered = collectives.reduce_scatter(x, "data", tiled=True)
        gathered = collectives.all_gather(scattered, "data", tiled=True)
        return gathered - collectives.psum(x, "data")

    out = run(mesh, both, X, check_vma)
    np.testing.assert_allclose(out, 0.0, atol=1e-5)


def test_multi_axis_names(mesh2d: jax.sharding.Mesh) -> None:
    X = RNG.standard_normal((4, 2 * 3)).astype(np.float32)

    def fn(x: jax.Array) -> jax.Array:
        total = collectives.psum(x, ("data", "tensor"))
        return jnp.concatenate(
            [total.ravel(), jnp.full((1,), collectives.axis_size(("data", "tensor")))]
        )[None, None]

    f = jax.jit(
        jax.shard_map(fn, mesh=mesh2d, in_specs=P("data", "tensor"), out_specs=P("data", "tensor"))
    )
    out = np.asarray(f(jnp.asarray(X)))
    expected = sum(np.split(b, 2, axis=1)[t] for b in np.split(X, 4, axis=0) for t in range(2))
    for d, t in itertools.product(range(4), range(2)):
        np.testing.assert_allclose(out[d, t, :-1], expected.ravel(), rtol=1e-5)
        assert out[d, t, -1] == 8


# -- gradients ---------------------------------------------------------------------------------


def reference_vjp(
    ref: Callable[[np.ndarray], np.ndarray], X: np.ndarray, W: np.ndarray
) -> np.ndarray:
    """Gradient of <W, ref(X)> for a linear ``ref``: grad_j = <W, ref(e_j)>."""
    grad = np.zeros(X.size)
    for j in range(X.size):
        basis = np.zeros(X.size, dtype=np.float64)
        basis[j] = 1.0
        grad[j] = np.sum(W * ref(basis.reshape(X.shape)))
    return grad.reshape(X.shape)


GRAD_CASES: dict[
    str, tuple[Callable[[jax.Array], jax.Array], Callable[[np.ndarray], Any], tuple[int, ...]]
] = {
    "psum": (
        lambda x: collectives.psum(x, "data"),
        lambda X: [np.sum(blocks(X), axis=0)] * N,
        (N * 2, 3),
    ),
    "all_gather_tiled": (
        lambda x: collectives.all_gather(x, "data", tiled=True, gather_dim=1),
        lambda X: [np.concatenate(blocks(X), axis=1)] * N,
        (N * 2, 3),
    ),
    "all_gather_stacked": (
        lambda x: collectives.all_gather(x, "data", tiled=False),
        lambda X: [np.stack(blocks(X))] * N,
        (N * 2, 3),
    ),
    "reduce_scatter_tiled": (
        lambda x: collectives.reduce_scatter(x, "data", tiled=True, scatter_dim=1),
        lambda X: np.split(np.sum(blocks(X), axis=0), N, axis=1),
        (N, N),
    ),
    "reduce_scatter_untiled": (
        lambda x: collectives.reduce_scatter(x, "data", tiled=False, scatter_dim=1),
        lambda X: [np.sum(blocks(X), axis=0)[:, i] for i in range(N)],
        (N, N),
    ),
    "all_to_all_0_1": (
        lambda x: collectives.all_to_all(x, "data", split_dim=0, concat_dim=1),
        lambda X: all_to_all_reference(blocks(X), 0, 1),
        (N * N, 2),
    ),
    "all_to_all_1_0": (
        lambda x: collectives.all_to_all(x, "data", split_dim=1, concat_dim=0),
        lambda X: all_to_all_reference(blocks(X), 1, 0),
        (N, N),
    ),
    "ppermute": (
        lambda x: collectives.ppermute(x, "data", [(i, (i + 3) % N) for i in range(N)]),
        lambda X: [blocks(X)[(i - 3) % N] for i in range(N)],
        (N, 2),
    ),
    "broadcast": (
        lambda x: collectives.broadcast(x, "data", source=6),
        lambda X: [blocks(X)[6]] * N,
        (N, 2),
    ),
}


@VMA
@pytest.mark.parametrize("case", sorted(GRAD_CASES))
def test_gradient_equals_analytic_transpose(
    mesh: jax.sharding.Mesh, case: str, check_vma: bool
) -> None:
    fn, ref, shape = GRAD_CASES[case]
    X = RNG.standard_normal(shape).astype(np.float32)
    f = per_device(mesh, fn, check_vma)
    out_shape = f(jnp.asarray(X)).shape
    W = RNG.standard_normal(out_shape).astype(np.float32)
    grad = jax.jit(jax.grad(lambda x: jnp.sum(jnp.asarray(W) * f(x))))(jnp.asarray(X))
    expected = reference_vjp(lambda A: np.stack(ref(A)), X, W.astype(np.float64))
    np.testing.assert_allclose(np.asarray(grad), expected, rtol=1e-5, atol=1e-5)


# -- errors ------------------------------------------------------------------------------------


def test_unknown_axis_lists_the_mesh_axes(mesh2d: jax.sharding.Mesh) -> None:
    f = jax.shard_map(
        lambda x: collectives.psum(x, "dta"), mesh=mesh2d, in_specs=P("data"), out_specs=P()
    )
    with pytest.raises(
        CollectiveError,
        match=r"collectives.psum: axis 'dta' is not bound; the mesh in force has axes "
        r"\['data', 'tensor'\]",
    ):
        f(jnp.zeros((4, 2)))


def test_outside_shard_map_says_so() -> None:
    with pytest.raises(
        CollectiveError, match=r"no mesh axis is bound here \(not inside jax.shard_map\)"
    ):
        collectives.pmean(jnp.zeros(3), "data")
    with pytest.raises(CollectiveError, match=r"axis=42 must be a mesh axis name"):
        collectives.pmean(jnp.zeros(3), 42)  # type: ignore[arg-type]


def test_vmap_axis_names_are_accepted() -> None:
    out = jax.vmap(lambda x: collectives.psum(x, "batch"), axis_name="batch")(jnp.arange(4.0))
    np.testing.assert_array_equal(np.asarray(out), [6.0] * 4)


def _call(mesh: jax.sharding.Mesh, fn: Any, shape: tuple[int, ...]) -> None:
    jax.shard_map(fn, mesh=mesh, in_specs=P("data"), out_specs=P("data"))(jnp.zeros(shape))


@pytest.mark.parametrize(
    ("fn", "shape", "match"),
    [
        (
            lambda x: collectives.ppermute(x, "data", [(0, 1), (1, 1)]),
            (N,),
            r"perm=\[\(0, 1\), \(1, 1\)\] is not a permutation: index \[1\] appears twice",
        ),
        (
            lambda x: collectives.ppermute(x, "data", [(0, 8)]),
            (N,),
            r"perm pairs \[\(0, 8\)\] are not \(source, destination\) indices in \[0, 8\)",
        ),
        (
            lambda x: collectives.all_to_all(x, "data", split_dim=1, concat_dim=0),
            (N, 6),
            r"split_dim=1 of shape \(1, 6\) has size 6; it must be divisible by 8",
        ),
        (
            lambda x: collectives.all_to_all(x, "data", split_dim=3, concat_dim=0),
            (N, 8),
            r"split_dim=3 is out of range for an input of shape \(1, 8\)",
        ),
        (
            lambda x: collectives.reduce_scatter(x, "data", tiled=True, scatter_dim=1),
            (N, 12),
            r"dim 1 of shape \(1, 12\) has size 12, not divisible by axis 'data' of size 8",
        ),
        (
            lambda x: collectives.reduce_scatter(x, "data", tiled=False, scatter_dim=1),
            (N, 4),
            r"with tiled=False dim 1 of shape \(1, 4\) must equal the size 8",
        ),
        (
            lambda x: collectives.all_gather(x, "data", tiled=True, gather_dim=2),
            (N, 4),
            r"gather_dim=2 is out of range for an input of shape \(1, 4\) with tiled=True",
        ),
        (
            lambda x: collectives.broadcast(x, "data", source=8),
            (N,),
            r"source=8 must be an index in \[0, 8\)",
        ),
    ],
)
def test_bad_arguments_raise(
    mesh: jax.sharding.Mesh, fn: Any, shape: tuple[int, ...], match: str
) -> None:
    with pytest.raises(CollectiveError, match=match):
        _call(mesh, fn, shape)
