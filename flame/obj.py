"""A small Wavefront OBJ reader and writer for triangle meshes with texture coordinates.

Reads ``v``, ``vt`` and ``f`` lines (``f v``, ``f v/vt``, ``f v/vt/vn``, ``f v//vn``; negative
indices count from the end; polygons are fan-triangulated). Other lines are ignored.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from utils.atomic import atomic_open
from utils.errors import InputError


class ObjFormatError(InputError, ValueError):
    """An OBJ file that cannot be read as a triangle mesh."""


@dataclass
class ObjMesh:
    """``vertices`` (N,3) float64, ``uv`` (T,2) float64 (T may be 0), ``faces`` (F,3) int64 vertex ids,
    ``uv_faces`` (F,3) int64 ids into ``uv``, or None when the faces carry no texture ids."""

    vertices: np.ndarray
    uv: np.ndarray
    faces: np.ndarray
    uv_faces: np.ndarray | None


def _index(token: str, count: int, path: Path, lineno: int) -> int:
    try:
        i = int(token)
    except ValueError:
        raise ObjFormatError(f"{path}:{lineno}: bad index {token!r} in a face") from None
    if i > 0:
        return i - 1
    if i < 0:
        return count + i
    raise ObjFormatError(f"{path}:{lineno}: OBJ indices start at 1, got 0")


def read_obj(path: str | Path) -> ObjMesh:
    """Read the triangle mesh in ``path``; raises :class:`ObjFormatError` naming the file and line."""
    path = Path(path)
    vertices: list[list[float]] = []
    uv: list[list[float]] = []
    faces: list[list[int]] = []
    uv_faces: list[list[int]] = []
    faces_without_uv = 0
    with open(path, encoding="utf-8", errors="replace") as fh:
        for lineno, line in enumerate(fh, 1):
            parts = line.split()
            if not parts:
                continue
            tag = parts[0]
            try:
                if tag == "v":
                    vertices.append([float(x) for x in parts[1:4]])
                    if len(vertices[-1]) != 3:
                        raise ValueError
                elif tag == "vt":
                    uv.append([float(x) for x in parts[1:3]])
                    if len(uv[-1]) != 2:
                        raise ValueError
            except ValueError:
                raise ObjFormatError(f"{path}:{lineno}: bad '{tag}' line: {line.strip()!r}") from None
            if tag != "f":
                continue
            corners = parts[1:]
            if len(corners) < 3:
                raise ObjFormatError(f"{path}:{lineno}: a face needs at least 3 corners: {line.strip()!r}")
            vids, tids = [], []
            for corner in corners:
                fields = corner.split("/")
                vids.append(_index(fields[0], len(vertices), path, lineno))
                if len(fields) > 1 and fields[1]:
                    tids.append(_index(fields[1], len(uv), path, lineno))
            if tids and len(tids) != len(vids):
                raise ObjFormatError(f"{path}:{lineno}: some corners have texture ids and some not")
            for k in range(1, len(vids) - 1):
                faces.append([vids[0], vids[k], vids[k + 1]])
                if tids:
                    uv_faces.append([tids[0], tids[k], tids[k + 1]])
                else:
                    faces_without_uv += 1
    if uv_faces and faces_without_uv:
        raise ObjFormatError(f"{path}: {faces_without_uv} faces lack texture ids while others have them")
    v = np.asarray(vertices, dtype=np.float64).reshape(-1, 3)
    t = np.asarray(uv, dtype=np.float64).reshape(-1, 2)
    f = np.asarray(faces, dtype=np.int64).reshape(-1, 3)
    ft = np.asarray(uv_faces, dtype=np.int64).reshape(-1, 3) if uv_faces else None
    if f.size and (f.min() < 0 or f.max() >= len(v)):
        raise ObjFormatError(f"{path}: face vertex index out of range (file has {len(v)} vertices)")
    if ft is not None and ft.size and (ft.min() < 0 or ft.max() >= len(t)):
        raise ObjFormatError(f"{path}: face texture index out of range (file has {len(t)} vt lines)")
    return ObjMesh(vertices=v, uv=t, faces=f, uv_faces=ft)


def write_obj(path: str | Path, vertices: np.ndarray, faces: np.ndarray, uv: np.ndarray | None = None,
              uv_faces: np.ndarray | None = None) -> None:
    """Write a triangle mesh (``f v/vt`` when ``uv`` is given, else ``f v``) atomically."""
    path = Path(path)
    lines = [f"v {x:.8f} {y:.8f} {z:.8f}" for x, y, z in np.asarray(vertices, dtype=np.float64)]
    faces = np.asarray(faces, dtype=np.int64) + 1
    if uv is not None:
        if uv_faces is None:
            raise ValueError("write_obj: uv given without uv_faces")
        lines += [f"vt {u:.8f} {v:.8f}" for u, v in np.asarray(uv, dtype=np.float64)]
        ft = np.asarray(uv_faces, dtype=np.int64) + 1
        lines += [f"f {a}/{ta} {b}/{tb} {c}/{tc}" for (a, b, c), (ta, tb, tc) in zip(faces, ft)]
    else:
        lines += [f"f {a} {b} {c}" for a, b, c in faces]
    atomic_write_bytes(path, ("\n".join(lines) + "\n").encode())


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename."""
    with atomic_open(path, "wb") as fh:
        fh.write(data)
