"""The filesystem's extended attributes: the ``user.*`` attributes a file keeps in
its object's metadata, and the read-only sync state (``STATE_XATTR``).

``ExtendedAttributes`` is a part of ``filesystem.Filesystem`` (its base class): its
methods use the filesystem's ``journal``, ``ns`` and ``flusher`` and its
``load_meta``.
"""

from __future__ import annotations

import errno
import time

from . import metadata
from .errors import FsError
from .journal import DIRTY_META, ROOT_INO, Inode
from .namespace import object_metadata

STATE_XATTR = "user.s3fuse.state"


class ExtendedAttributes:
    """The extended-attribute half of ``Filesystem`` (see the module docstring)."""

    def sync_state(self, inode: Inode) -> str:
        """What ``user.s3fuse.state`` says: uploading, conflict, local-only, dirty or
        synced (over every name of a hard-linked file)."""
        with self.journal.read() as txn:
            records = self.ns.records(txn, inode)
            exported = inode.ino == ROOT_INO or any(self.ns.object_key(txn, r) is not None
                                                     for r in records)
        if self.flusher is not None and any(self.flusher.is_uploading(r.ino)
                                            for r in records):
            return "uploading"
        if self.ns.in_lost_found(inode):
            return "conflict"
        if not exported:
            return "local-only"
        return "dirty" if any(r.dirty for r in records) else "synced"

    async def getxattr(self, ino: int, name: str) -> bytes:
        """An extended attribute, or the sync state (``STATE_XATTR``). Loads the
        attributes first. Only ``user.*`` exist: any other namespace answers
        EOPNOTSUPP at once, as ``setxattr`` does. That is also what makes ``ls -l``
        ask once per mount instead of once per file: it asks every file for
        ``security.selinux`` and ``system.posix_acl_access`` and remembers a device
        that answers "not supported" (ENODATA would mean "supported, none here").
        The kernel itself remembers nothing but ENOSYS, which would turn off
        ``user.*`` too (``no_getxattr``)."""
        if not name.startswith("user."):
            raise FsError(errno.EOPNOTSUPP)
        inode = await self.load_meta(ino)
        if name == STATE_XATTR:
            return self.sync_state(inode).encode()
        if name not in inode.xattrs:
            raise FsError(errno.ENODATA)
        return metadata.xattr_value(inode.xattrs[name])

    async def listxattr(self, ino: int) -> list[str]:
        """The names of the inode's extended attributes (loaded first)."""
        return sorted((await self.load_meta(ino)).xattrs)

    async def setxattr(self, ino: int, name: str, value: bytes) -> None:
        """Set a ``user.*`` attribute (EOPNOTSUPP otherwise; EPERM for the state
        attribute; E2BIG past the object's 2 KiB of metadata). Marks DIRTY_META."""
        await self.load_meta(ino)
        if not name.startswith("user.") or name == STATE_XATTR:
            raise FsError(errno.EOPNOTSUPP if not name.startswith("user.") else errno.EPERM)
        pending: list[int] = []
        with self.journal.write() as txn:
            inode = self.ns.get_in(txn, ino)
            xattrs = dict(inode.xattrs)
            xattrs[name] = metadata.xattr_encode(value)
            md = object_metadata(inode, xattrs=xattrs)
            if metadata.metadata_size(md) > metadata.METADATA_LIMIT_BYTES:
                raise FsError(errno.E2BIG, "object metadata is limited to 2 KiB")
            inode.xattrs = xattrs
            inode.ctime_ns = time.time_ns()
            self.ns.mark(txn, inode, DIRTY_META, pending)
            txn.put(inode)
        self.ns.notify(pending)

    async def removexattr(self, ino: int, name: str) -> None:
        """Remove an extended attribute (ENODATA if it has none). Marks DIRTY_META."""
        await self.load_meta(ino)
        pending: list[int] = []
        with self.journal.write() as txn:
            inode = self.ns.get_in(txn, ino)
            if name not in inode.xattrs:
                raise FsError(errno.ENODATA)
            del inode.xattrs[name]
            inode.ctime_ns = time.time_ns()
            self.ns.mark(txn, inode, DIRTY_META, pending)
            txn.put(inode)
        self.ns.notify(pending)
