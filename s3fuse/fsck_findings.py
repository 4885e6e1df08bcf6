"""What fsck finds, and how it repairs it: ``Finding`` and ``Report`` (what the
command prints, as text or JSON), and the repair actions, each a function of the
repair transaction that ``fsck._Checker.apply`` runs at the end.
"""

from __future__ import annotations

import stat
from collections.abc import Callable
from dataclasses import dataclass, field

from . import metadata
from .journal import Inode, Txn
from .namespace import set_remote
from .store.base import ObjectInfo

INFO_KINDS = frozenset({"pending-upload", "pending-op", "new-outside", "unlinked-inode"})


@dataclass
class Finding:
    """One difference. ``subject`` is an inode number, or a key / cache file name."""

    kind: str
    subject: int | str
    detail: str
    repaired: bool = False
    path: str | None = None  # the inode's path on the mount, when there is one

    @property
    def severity(self) -> str:
        return "info" if self.kind in INFO_KINDS else "problem"

    def as_dict(self) -> dict:
        return {"kind": self.kind, "severity": self.severity, "subject": self.subject,
                "path": self.path, "detail": self.detail, "repaired": self.repaired}

    def __str__(self) -> str:
        where = self.path if self.path is not None else str(self.subject)
        if self.path is not None and isinstance(self.subject, int):
            where += f" (ino {self.subject})"
        done = " [repaired]" if self.repaired else ""
        return f"{self.severity:7} {self.kind:17} {where}: {self.detail}{done}"


@dataclass
class Report:
    findings: list[Finding] = field(default_factory=list)
    repair: bool = False
    bucket_checked: bool = False

    @property
    def problems(self) -> list[Finding]:
        """Findings that still stand: not informational, not repaired."""
        return [f for f in self.findings if f.severity == "problem" and not f.repaired]

    @property
    def clean(self) -> bool:
        return not self.problems

    def kinds(self) -> set[str]:
        return {f.kind for f in self.findings}

    def of_kind(self, kind: str) -> list[Finding]:
        return [f for f in self.findings if f.kind == kind]

    def as_dict(self) -> dict:
        return {"clean": self.clean, "repair": self.repair,
                "bucket_checked": self.bucket_checked,
                "problems": len(self.problems),
                "repaired": sum(1 for f in self.findings if f.repaired),
                "findings": [f.as_dict() for f in self.findings]}

    def summary(self) -> str:
        problems = [f for f in self.findings if f.severity == "problem"]
        notes = len(self.findings) - len(problems)
        fixed = sum(1 for f in problems if f.repaired)
        left = len(problems) - fixed
        tail = f", {notes} notes" if notes else ""
        if not problems:
            return f"clean{tail}"
        if self.repair:
            return (f"{fixed} of {len(problems)} problems repaired{tail}"
                    + (f"; {left} not safe to repair automatically" if left else ""))
        return f"{len(problems)} problems{tail}; --repair fixes what is safe to fix"


# --- repair actions: each re-reads what it changes inside the repair transaction -------

def _set_fields(ino: int, **values) -> Callable[[Txn], None]:
    def fix(txn: Txn) -> None:
        inode = txn.get(ino)
        if inode is not None:
            for name, value in values.items():
                setattr(inode, name, value)
            txn.put(inode)
    return fix


def _mark_dirty(ino: int, flags: int = 0) -> Callable[[Txn], None]:
    def fix(txn: Txn) -> None:
        inode = txn.get(ino)
        if inode is None:
            return
        if flags:
            inode.dirty |= flags
            inode.change_seq += 1
            txn.put(inode)
        txn.mark_dirty(ino)
    return fix


def _clear_dirty(ino: int) -> Callable[[Txn], None]:
    def fix(txn: Txn) -> None:
        txn.clear_dirty(ino)
    return fix


def _delete_inode(ino: int) -> Callable[[Txn], None]:
    def fix(txn: Txn) -> None:
        txn.delete_inode(ino)
    return fix


def _unlink_entry(parent: int, name: bytes, ino: int) -> Callable[[Txn], None]:
    def fix(txn: Txn) -> None:
        if txn.lookup(parent, name) == ino:
            txn.unlink(parent, name)
    return fix


def _drop_entry(parent: int, name: bytes, ino: int, is_dir: bool) -> Callable[[Txn], None]:
    def fix(txn: Txn) -> None:
        if txn.lookup(parent, name) != ino:
            return
        txn.unlink(parent, name)
        txn.delete_inode(ino)
        p = txn.get(parent)
        if is_dir and p is not None:
            p.nlink -= 1
            txn.put(p)
    return fix


def _adopt(ino: int, key: str, head: ObjectInfo) -> Callable[[Txn], None]:
    def fix(txn: Txn) -> None:
        inode = txn.get(ino)
        if inode is None:
            return
        is_dir = stat.S_ISDIR(inode.mode)
        # what the object says, with this inode's attributes where it says nothing
        fields = metadata.decode(head.metadata, is_dir=is_dir,
                                 default_mode=stat.S_IMODE(inode.mode),
                                 default_uid=inode.uid, default_gid=inode.gid,
                                 fallback_mtime_ns=head.mtime_ns)
        mode = fields.pop("mode")
        if stat.S_ISDIR(mode) != is_dir:
            mode = stat.S_IFMT(inode.mode) | stat.S_IMODE(mode)
        inode.mode = mode
        for name, value in fields.items():
            setattr(inode, name, value)
        set_remote(inode, key, head.etag)
        inode.meta_loaded = True
        if not is_dir:
            inode.size = head.size
            inode.cached = False
            inode.target = None  # a symlink's target is read from the object again
        txn.put(inode)
    return fix


def _set_counter(name: bytes, value: int) -> Callable[[Txn], None]:
    def fix(txn: Txn) -> None:
        txn.set_counter(name, value)
    return fix


def _name_bytes(name: str) -> bytes:
    return name.encode("utf-8", "surrogatepass")  # as keys.name_from_segment


def _has_local_content(inode: Inode) -> bool:
    """Could the next mount upload this inode from local state alone?"""
    if stat.S_ISREG(inode.mode):
        return inode.cached
    if stat.S_ISLNK(inode.mode):
        return inode.target is not None
    return True  # FIFOs, sockets, devices: the object is empty, the mode is all
