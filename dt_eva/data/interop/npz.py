"""Reading the arrays of an `.npz` front to back in row chunks, without loading a whole array.

An `.npz` is a zip of `.npy` members. `zipfile` streams a member whether it is stored
(`np.savez`) or deflated (`np.savez_compressed`), so one code path reads both, and the memory used
is one chunk, not the member: 2M x 39 float32 observations (312 MB) convert in a few MB.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np


class NpzError(ValueError):
    """An `.npz` file or one of its arrays cannot be read; the message names the file and key."""


class NpzMember:
    """One array of an open `.npz`: `shape` and `dtype` from its header, rows via `read(n)`."""

    def __init__(self, archive: zipfile.ZipFile, path: Path, key: str):
        self.where = f"{path}: {key!r}"
        self._f = archive.open(f"{key}.npy")
        try:
            version = np.lib.format.read_magic(self._f)
            read_header = {(1, 0): np.lib.format.read_array_header_1_0,
                           (2, 0): np.lib.format.read_array_header_2_0}.get(version)
            if read_header is None:
                raise NpzError(f"{self.where}: .npy format version {version} is not supported (re-save it with numpy)")
            self.shape, fortran, self.dtype = read_header(self._f)
        except ValueError as e:
            raise NpzError(f"{self.where}: not a readable .npy array ({e})") from None
        if self.dtype.hasobject:
            raise NpzError(f"{self.where}: holds Python objects (a pickle); save plain numeric arrays")
        if fortran and len(self.shape) > 1:
            raise NpzError(f"{self.where}: saved in Fortran order; re-save it with np.ascontiguousarray")
        self._row_bytes = int(np.prod(self.shape[1:], dtype=np.int64)) * self.dtype.itemsize
        self.position = 0

    def read(self, rows: int) -> np.ndarray:
        """The next `rows` rows, `[rows, *shape[1:]]`."""
        data = self._f.read(rows * self._row_bytes)
        if len(data) != rows * self._row_bytes:
            row = self.position + len(data) // max(self._row_bytes, 1)
            raise NpzError(f"{self.where}: the file is truncated (it ends inside row {row})")
        self.position += rows
        return np.frombuffer(data, dtype=self.dtype).reshape(rows, *self.shape[1:])

    def read_range(self, start: int, stop: int, chunk_rows: int = 65536) -> np.ndarray:
        """Rows `start..stop` (forward only: `start >= position`); the rows skipped on the way are discarded."""
        while self.position < start:
            self.read(min(chunk_rows, start - self.position))
        return self.read(stop - start)

    def close(self) -> None:
        self._f.close()


def open_npz(path: Path) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile) as e:
        raise NpzError(f"{path}: not a readable .npz file ({e})") from None


def npz_keys(archive: zipfile.ZipFile) -> list[str]:
    return [n[: -len(".npy")] for n in archive.namelist() if n.endswith(".npy")]
