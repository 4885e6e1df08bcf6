"""Linux native asynchronous I/O (io_setup/io_submit/io_getevents) through raw system
calls on x86_64, for tests: what libaio does, without needing libaio installed."""

from __future__ import annotations

import ctypes
import mmap
import os
import platform

_libc = ctypes.CDLL(None, use_errno=True)
SYS_IO_SETUP, SYS_IO_DESTROY, SYS_IO_GETEVENTS, SYS_IO_SUBMIT = 206, 207, 208, 209
IOCB_CMD_PREAD, IOCB_CMD_PWRITE = 0, 1


def available() -> bool:
    return platform.machine() == "x86_64"


class _Iocb(ctypes.Structure):  # struct iocb, linux/aio_abi.h (little-endian)
    _fields_ = [("aio_data", ctypes.c_uint64), ("aio_key", ctypes.c_uint32),
                ("aio_rw_flags", ctypes.c_int32), ("aio_lio_opcode", ctypes.c_uint16),
                ("aio_reqprio", ctypes.c_int16), ("aio_fildes", ctypes.c_uint32),
                ("aio_buf", ctypes.c_uint64), ("aio_nbytes", ctypes.c_uint64),
                ("aio_offset", ctypes.c_int64), ("aio_reserved2", ctypes.c_uint64),
                ("aio_flags", ctypes.c_uint32), ("aio_resfd", ctypes.c_uint32)]


class _IoEvent(ctypes.Structure):
    _fields_ = [("data", ctypes.c_uint64), ("obj", ctypes.c_uint64),
                ("res", ctypes.c_int64), ("res2", ctypes.c_int64)]


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


def _check(rc: int) -> int:
    if rc < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return rc


class AioContext:
    """One io_setup context; ``pwrite``/``pread`` submit one request and wait for it."""

    def __init__(self, depth: int = 8) -> None:
        self._ctx = ctypes.c_ulong(0)
        _check(_libc.syscall(SYS_IO_SETUP, ctypes.c_uint(depth), ctypes.byref(self._ctx)))

    def _run(self, fd: int, op: int, buf: mmap.mmap, offset: int, timeout_s: float) -> int:
        addr = ctypes.addressof((ctypes.c_char * len(buf)).from_buffer(buf))
        cb = _Iocb(aio_lio_opcode=op, aio_fildes=fd, aio_buf=addr, aio_nbytes=len(buf),
                   aio_offset=offset)
        cbs = (ctypes.POINTER(_Iocb) * 1)(ctypes.pointer(cb))
        _check(_libc.syscall(SYS_IO_SUBMIT, self._ctx, ctypes.c_long(1), cbs))
        events = (_IoEvent * 1)()
        timeout = _Timespec(int(timeout_s), 0)
        got = _check(_libc.syscall(SYS_IO_GETEVENTS, self._ctx, ctypes.c_long(1),
                                   ctypes.c_long(1), events, ctypes.byref(timeout)))
        if got != 1:
            raise TimeoutError(f"asynchronous I/O did not complete in {timeout_s} s")
        if events[0].res < 0:
            raise OSError(-events[0].res, os.strerror(-events[0].res))
        return events[0].res

    def pwrite(self, fd: int, buf: mmap.mmap, offset: int, timeout_s: float = 30) -> int:
        """Write all of ``buf`` (page aligned: an anonymous mmap) at ``offset``."""
        return self._run(fd, IOCB_CMD_PWRITE, buf, offset, timeout_s)

    def pread(self, fd: int, buf: mmap.mmap, offset: int, timeout_s: float = 30) -> int:
        return self._run(fd, IOCB_CMD_PREAD, buf, offset, timeout_s)

    def close(self) -> None:
        _libc.syscall(SYS_IO_DESTROY, self._ctx)
