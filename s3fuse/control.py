"""How the CLI reaches a running daemon: extended attributes on the mount's root.

Every answer is a value the CLI reads, never an errno: an errno from a FUSE daemon
does not always reach the caller as sent (Linux answers a setxattr that the daemon
failed with EAGAIN as EOPNOTSUPP), and a request that blocks in the kernel cannot be
interrupted by Ctrl-C. So nothing here blocks:

* ``getxattr(MOUNTPOINT, CONTROL_STATUS)``: the status, as JSON; ``CONTROL_PID``: the
  daemon's pid.
* ``setxattr(MOUNTPOINT, CONTROL_DRAIN, {"id": ID, "timeout": S, "paths": [...], "for":
  "sync" or "umount"})``
  starts uploading everything pending (or what is under ``paths``) now and returns at
  once; ``getxattr(MOUNTPOINT, drain_result_name(ID))`` then reads how that drain is
  doing, as JSON (``state``: running, done, gave_up, cancelled; the pending figures).
  ``setxattr(MOUNTPOINT, CONTROL_DRAIN, {"id": ID, "cancel": true})`` stops it.
* ``setxattr(MOUNTPOINT, CONTROL_KEEP_PENDING, b"1")``: the coming unmount does not
  wait for the bucket; what is pending stays in the journal for the next mount.

Only root and the mounting user may set these. There is no socket to secure: the
kernel's permission checks on the mount apply. Kept apart from ``fuse_ops`` so that the
CLI does not import pyfuse3 and trio just to name these.
"""

CONTROL_DRAIN = "user.s3fuse.drain"
CONTROL_STATUS = "user.s3fuse.status"
CONTROL_PID = "user.s3fuse.pid"
CONTROL_KEEP_PENDING = "user.s3fuse.keep-pending"
#: prefix of the names that read one drain's progress (see ``drain_result_name``)
DRAIN_RESULT_PREFIX = CONTROL_DRAIN + "."


def drain_result_name(drain_id: str) -> str:
    return DRAIN_RESULT_PREFIX + drain_id
