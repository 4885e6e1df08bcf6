"""The command line's side of the control protocol (see ``control``): reading a
mount's status, and starting a drain and waiting for it with progress. Shared by the
commands in ``cli`` and ``cli_timetravel``. Nothing here blocks in the kernel: a wait
polls, so Ctrl-C stops it at once.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import sys
import time
import uuid

from . import words
from .control import CONTROL_DRAIN, CONTROL_PID, CONTROL_STATUS, drain_result_name
from .errors import UsageError


def control_get(mountpoint: str, name: str) -> bytes:
    try:
        return os.getxattr(mountpoint, name)
    except OSError as exc:
        raise UsageError(f"no s3fuse mount at {mountpoint} ({exc.strerror})") from None


def control_json(mountpoint: str, name: str) -> dict:
    try:
        return json.loads(control_get(mountpoint, name))
    except ValueError:
        raise UsageError(f"the daemon at {mountpoint} gave an answer that is not JSON; "
                         "is it the same s3fuse version?") from None


def control_set(mountpoint: str, name: str, value: dict | bytes) -> None:
    data = value if isinstance(value, bytes) else json.dumps(value).encode()
    try:
        os.setxattr(mountpoint, name, data)
    except OSError as exc:
        if exc.errno in (errno.EPERM, errno.EACCES):
            raise UsageError(f"only root and the user who mounted {mountpoint} may make it "
                             "upload or unmount") from None
        raise UsageError(f"the daemon at {mountpoint} refused the request "
                         f"({exc.strerror})") from None


def require_mount(mountpoint: str) -> str:
    mp = os.path.abspath(mountpoint)
    if not os.path.ismount(mp):
        raise UsageError(f"nothing is mounted at {mp}")
    control_get(mp, CONTROL_PID)
    return mp


def mount_root(path: str) -> str:
    """The mount point of the s3fuse mount that holds ``path`` (any path inside it)."""
    full = os.path.abspath(path)
    if not os.path.exists(full):
        raise UsageError(f"{full} does not exist")
    root = full
    while not os.path.ismount(root):
        root = os.path.dirname(root)
    try:
        os.getxattr(root, CONTROL_PID)
    except OSError:
        raise UsageError(f"no s3fuse mount at {full}" +
                         ("" if root == full else " or above it")) from None
    return root


def relative_paths(mp: str, paths: list[str]) -> list[str]:
    out = []
    for p in paths:
        full = os.path.abspath(p if os.path.isabs(p) else os.path.join(os.getcwd(), p))
        if full != mp and not full.startswith(mp + os.sep):
            raise UsageError(f"{p} is not inside the mount {mp}")
        out.append(os.path.relpath(full, mp) if full != mp else "")
    return out


def pending_of(figures: dict) -> str:
    return words.pending(figures["dirty_files"], figures["dirty_bytes"],
                         figures["pending_ops"])


def error_words(error: dict) -> str:
    """A store error's message names the request, the key and the endpoint already."""
    return error["message"]


class Progress:
    """How a wait is doing. On a terminal: one line on stderr, rewritten in place. Else:
    a line on stdout when the figures change, at most every 2 s."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.tty = sys.stderr.isatty()
        self.since = time.time()  # errors from before the wait are not its news
        self.drawn = False
        self.last_line = ""
        self.last_at = 0.0

    def show(self, r: dict) -> None:
        parts = [f"{pending_of(r)} pending"]
        if r.get("uploads_in_flight"):
            parts.append(f"{r['uploads_in_flight']} uploading")
        if r.get("retrying_files"):
            parts.append(f"{words.plural(r['retrying_files'], 'file')} waiting to retry")
        if r.get("ops_retrying"):
            parts.append("renames/deletes waiting to retry")
        last = r.get("last_error")
        if last and last["time"] >= self.since - 60:
            parts.append(f"last error: {error_words(last)}")
        line = f"{self.label}: " + ", ".join(parts)
        if self.tty:
            line += f" [{words.duration(r['elapsed_s'])} of {words.duration(r['timeout_s'])}]"
            width = shutil.get_terminal_size((100, 24)).columns
            if len(line) >= width:
                line = line[:max(10, width - 4)] + "..."
            sys.stderr.write("\r" + line + "\x1b[K")
            sys.stderr.flush()
            self.drawn = True
        elif line != self.last_line and time.monotonic() - self.last_at >= 2.0:
            print(line, flush=True)
            self.last_line, self.last_at = line, time.monotonic()

    def end(self) -> None:
        if self.drawn:
            sys.stderr.write("\r\x1b[K")
            sys.stderr.flush()


def stop_waiting(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def wait_for_drain(mp: str, timeout_s: float | None, paths: list[str] | None,
                    label: str) -> dict:
    """Have the daemon upload what is pending (under ``paths``) now, and wait for it,
    showing progress. Returns the drain's last report (``state``: done, gave_up or
    cancelled). On Ctrl-C the drain is called off, and KeyboardInterrupt goes on up."""
    drain_id = uuid.uuid4().hex
    signal.signal(signal.SIGTERM, stop_waiting)  # kill(1) stops the waiting as Ctrl-C does
    control_set(mp, CONTROL_DRAIN, {"id": drain_id, "timeout": timeout_s, "paths": paths,
                                     "for": "umount" if label == "unmounting" else "sync"})
    progress = Progress(label)
    started = time.monotonic()
    try:
        while True:
            result = control_json(mp, drain_result_name(drain_id))
            if result["state"] != "running":
                return result
            progress.show(result)
            # often at first: a short sync should not wait out a long sleep
            time.sleep(0.05 if time.monotonic() - started < 10 else 0.5)
    except KeyboardInterrupt:
        for signum in (signal.SIGINT, signal.SIGTERM):  # a second one: no traceback
            signal.signal(signum, signal.SIG_IGN)
        try:
            control_set(mp, CONTROL_DRAIN, {"id": drain_id, "cancel": True})
        except UsageError:
            pass
        raise
    finally:
        progress.end()


def gave_up(mp: str, r: dict, unmounting: bool) -> str:
    last = r.get("last_error")
    if last and last.get("transient"):
        why = f"bucket unreachable (last error: {error_words(last)})"
    elif last:
        why = f"uploads failing (last error: {error_words(last)})"
    else:
        why = "the uploads did not finish"
    text = f"{pending_of(r)} still pending after {words.duration(r['elapsed_s'])}, {why}; "
    if unmounting:
        return text + (f"the mount stays. Run `s3fuse umount --keep-pending {mp}` to "
                       "unmount anyway; the next mount of this cache directory uploads them.")
    return text + f"the mount stays and keeps retrying (see `s3fuse status {mp}`)."


def stopped_waiting(mp: str) -> int:
    """After Ctrl-C: what is pending, and that nothing is lost."""
    try:
        figures = pending_of(control_json(mp, CONTROL_STATUS)) + " still pending"
    except (UsageError, KeyError):
        figures = "what is pending stays pending"
    print(f"\ns3fuse: stopped waiting; {figures} at {mp}. The mount stays and nothing is "
          f"lost: it is kept in the journal and uploaded when the bucket answers "
          f"(`s3fuse status {mp}`).", file=sys.stderr, flush=True)
    return 130
