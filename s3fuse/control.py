"""How the CLI reaches a running daemon: extended attributes on the mount's root.

``getxattr(MOUNTPOINT, CONTROL_STATUS)`` returns the status as JSON, ``CONTROL_PID``
the daemon's pid, and reading ``CONTROL_DRAIN`` uploads everything pending first
(only root and the mounting user may). There is no socket to secure: the kernel's
permission checks on the mount apply. Kept apart from ``fuse_ops`` so that the CLI
does not import pyfuse3 and trio just to name these.
"""

CONTROL_DRAIN = "user.s3fuse.drain"
CONTROL_STATUS = "user.s3fuse.status"
CONTROL_PID = "user.s3fuse.pid"
