"""``TokenWindows``: next-token-prediction samples cut from one long token array."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from titanax.io._errors import DataError

__all__ = ["TokenWindows"]


def _integer_dtype(api: str, name: str, dtype: Any) -> np.dtype[Any]:
    """``dtype`` as a NumPy integer dtype.

    Raises:
      DataError: it is not a dtype, or not an integer one (float, bool, ...).
    """
    try:
        out: np.dtype[Any] = np.dtype(dtype)
    except TypeError as err:
        raise DataError(
            f"{api}: {name}={dtype!r} is not a NumPy dtype; pass an integer dtype such as "
            "np.uint16 or 'int32'."
        ) from err
    if out.kind not in "iu":
        raise DataError(
            f"{api}: {name}={out} is not an integer dtype; token ids are integers (e.g. uint16 "
            "for GPT-2's 50257-token vocabulary, int32 for larger ones)."
        )
    return out


class TokenWindows:
    """Fixed-length windows over a 1-D token array, as ``{"inputs", "targets"}`` samples.

    Window ``i`` starts at token ``i * stride`` and covers ``seq_len + 1`` tokens: ``inputs``
    are the first ``seq_len`` of them, ``targets`` the last ``seq_len`` (shifted by one). With the
    default ``stride == seq_len`` windows do not overlap in their inputs. The array may be an
    ``np.memmap`` (see :meth:`from_file`): only the windows asked for are read.

    Batched reads (``__getitems__``, used by :class:`ShardedLoader`) gather all windows of a batch
    with one fancy-indexing read.

    Args:
      tokens: 1-D array of token ids (any integer dtype, e.g. ``uint16`` for byte-level or
        GPT-2 vocabularies).
      seq_len: tokens per sample (the model's context length).
      stride: tokens between window starts (default ``seq_len``).
      dtype: integer dtype of the returned ids (default ``int32``, what embedding lookups
        want).

    Raises:
      DataError: ``tokens`` is not 1-D or not of an integer dtype (float or bool token arrays
        are refused: their values are not token ids), ``dtype`` is not an integer dtype,
        ``seq_len`` or ``stride`` is not positive, or there are fewer than ``seq_len + 1``
        tokens.

    Example:
      >>> windows = TokenWindows(np.arange(10, dtype=np.uint16), seq_len=4)
      >>> len(windows), windows[1]["inputs"].tolist(), windows[1]["targets"].tolist()
      (2, [4, 5, 6, 7], [5, 6, 7, 8])
    """

    def __init__(
        self,
        tokens: Any,
        seq_len: int,
        *,
        stride: int | None = None,
        dtype: Any = np.int32,
    ) -> None:
        arr = tokens if isinstance(tokens, np.ndarray) else np.asarray(tokens)
        if arr.ndim != 1:
            raise DataError(f"TokenWindows: tokens must be 1-D, got shape {arr.shape}.")
        if arr.dtype.kind not in "iu":
            raise DataError(
                f"TokenWindows: tokens have dtype {arr.dtype}; token ids must be integers "
                "(e.g. uint16 or int32). Tokenize the text first, or convert ids stored as "
                "floats with tokens.astype(np.int32) after checking they are whole numbers."
            )
        for name, value in (
            ("seq_len", seq_len),
            ("stride", seq_len if stride is None else stride),
        ):
            if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
                raise DataError(f"TokenWindows: {name}={value!r} must be a positive int.")
        self._tokens = arr
        self._seq_len = int(seq_len)
        self._stride = int(seq_len if stride is None else stride)
        self._dtype = _integer_dtype("TokenWindows", "dtype", dtype)
        if arr.shape[0] < self._seq_len + 1:
            raise DataError(
                f"TokenWindows: {arr.shape[0]} tokens cannot make one window of seq_len="
                f"{self._seq_len} (needs seq_len + 1 = {self._seq_len + 1} tokens)."
            )
        self._len = int((arr.shape[0] - self._seq_len - 1) // self._stride + 1)
        self._offsets = np.arange(self._seq_len + 1)

    @classmethod
    def from_file(
        cls,
        path: str | os.PathLike[str],
        seq_len: int,
        *,
        token_dtype: Any = np.uint16,
        stride: int | None = None,
        dtype: Any = np.int32,
    ) -> TokenWindows:
        """Windows over a raw token file read through ``np.memmap`` (read-only, lazily paged).

        Args:
          path: a flat binary file of ``token_dtype`` ids (e.g. nanoGPT's ``train.bin``).
          seq_len: tokens per sample.
          token_dtype: integer dtype the file was written with (default ``uint16``).
          stride: tokens between window starts (default ``seq_len``).
          dtype: dtype of the returned ids.

        Raises:
          DataError: the file does not exist, is not a regular file, is empty or cannot be
            read; ``token_dtype`` is not an integer dtype; the file size is not a multiple of
            ``token_dtype``'s item size (written with another dtype, or truncated); and the
            errors of the constructor.
        """
        api = f"TokenWindows.from_file({os.fspath(path)!r})"
        token_type = _integer_dtype(api, "token_dtype", token_dtype)
        file = os.fspath(path)
        if not os.path.isfile(file):
            what = "is not a regular file" if os.path.exists(file) else "does not exist"
            raise DataError(f"{api}: {file} {what}; pass the path of a flat binary token file.")
        try:
            size = os.path.getsize(file)
            if size == 0:
                raise DataError(f"{api}: {file} is empty; it holds no tokens.")
            if size % token_type.itemsize:
                raise DataError(
                    f"{api}: {file} has {size} bytes, not a multiple of {token_type.itemsize} "
                    f"(the item size of token_dtype={token_type}): it was written with another "
                    "dtype, or it is truncated. Pass the token_dtype it was written with."
                )
            tokens = np.memmap(file, dtype=token_type, mode="r")
        except OSError as err:
            raise DataError(f"{api}: cannot read {file}: {type(err).__name__}: {err}.") from err
        return cls(tokens, seq_len, stride=stride, dtype=dtype)

    @property
    def seq_len(self) -> int:
        """Tokens per sample."""
        return self._seq_len

    @property
    def stride(self) -> int:
        """Tokens between window starts."""
        return self._stride

    def __len__(self) -> int:
        return self._len

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        """Window ``index`` as ``{"inputs": [seq_len], "targets": [seq_len]}``."""
        if isinstance(index, bool) or not isinstance(index, int | np.integer):
            raise DataError(f"TokenWindows: index {index!r} must be an int.")
        i = int(index) + (self._len if index < 0 else 0)
        if not 0 <= i < self._len:
            raise IndexError(f"TokenWindows: index {index} out of range for {self._len} windows")
        row = np.asarray(self._tokens[i * self._stride : i * self._stride + self._seq_len + 1])
        row = row.astype(self._dtype)
        return {"inputs": row[:-1], "targets": row[1:]}

    def __getitems__(self, indices: Sequence[int] | np.ndarray) -> dict[str, np.ndarray]:
        """Windows ``indices`` as ``{"inputs": [n, seq_len], "targets": [n, seq_len]}``."""
        idx = np.asarray(indices, dtype=np.int64)
        if idx.ndim != 1:
            raise DataError(f"TokenWindows: indices must be 1-D, got shape {idx.shape}.")
        if idx.size and (idx.min() < 0 or idx.max() >= self._len):
            raise IndexError(
                f"TokenWindows: indices span [{idx.min()}, {idx.max()}], outside [0, {self._len})"
            )
        rows = np.asarray(self._tokens[idx[:, None] * self._stride + self._offsets])
        rows = rows.astype(self._dtype)
        return {"inputs": rows[:, :-1], "targets": rows[:, 1:]}

    def __repr__(self) -> str:
        return (
            f"TokenWindows({self._tokens.shape[0]} tokens, seq_len={self._seq_len}, "
            f"stride={self._stride}, {self._len} windows)"
        )
