"""Numbers as a person reads them: sizes in binary units, counts with their noun."""

from __future__ import annotations

_UNITS = ("KiB", "MiB", "GiB", "TiB", "PiB")


def plural(n: int, noun: str, nouns: str | None = None) -> str:
    """``1 file``, ``0 files``, ``2 bucket operations``."""
    return f"{n} {noun if n == 1 else (nouns or noun + 's')}"


def size(n: int | float) -> str:
    """``0 bytes``, ``1 byte``, ``999 bytes``, ``1.5 KiB``, ``12 MiB``, ``3.2 GiB``."""
    n = int(n)
    if abs(n) < 1024:
        return plural(n, "byte")
    value = float(n)
    for unit in _UNITS:
        value /= 1024
        if abs(value) < 1024 or unit == _UNITS[-1]:
            return f"{value:.1f} {unit}" if abs(value) < 100 else f"{value:.0f} {unit}"
    raise AssertionError("unreachable")


def pending(files: int, size_bytes: int, ops: int = 0) -> str:
    """``3 files (1.2 MiB)``, with ``and 2 bucket operations`` (renames, deletes) when
    there are any."""
    text = f"{plural(files, 'file')} ({size(size_bytes)})"
    if ops:
        text += f" and {plural(ops, 'bucket operation')}"
    return text


def duration(seconds: float) -> str:
    """``0.4 s``, ``12 s``, ``3 min 5 s``, ``2 h 1 min``."""
    if seconds < 10:
        return f"{seconds:.1f} s"
    s = int(round(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60} s" if s % 60 else f"{s // 60} min"
    return f"{s // 3600} h {s % 3600 // 60} min"
