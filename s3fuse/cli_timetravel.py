"""The time-travel commands' arguments and output: ``versioning``, ``snapshot``,
``history``, ``restore``, ``fork`` (docs/SEMANTICS.md, "Time travel"). The work is
done in ``snapshots``, ``history``, ``restore`` and ``fork``; the stores are reached
as ``workspace`` says.

Every error is one line on stderr and a non-zero exit (2 for bad arguments, 1 for
everything else, 130 after Ctrl-C).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from urllib.parse import urlsplit

from . import client, history, snapshots, timeline, words
from .config import parse_seconds
from .errors import NoSuchKey, S3FuseError, StoreError, UsageError
from .fork import FORK_RECORD, Side, fork
from .restore import Restorer
from .store import open_store
from .workspace import (Progress, Workspace, find_mount, leave_if_stopped, open_mount,
                        open_url)

COMMANDS = ("versioning", "snapshot", "history", "restore", "fork")


def add_parsers(sub: argparse._SubParsersAction) -> None:
    v = sub.add_parser("versioning", help="turn bucket versioning on, or show it",
                       description="Time travel needs a bucket that keeps old versions. "
                                   "`enable` turns S3 bucket versioning on (or, for a "
                                   "file:// store, keeps old versions outside the key space).")
    v.add_argument("action", choices=("enable", "status"))
    v.add_argument("url", metavar="URL", help="s3://BUCKET or file:///PATH")
    v.add_argument("--endpoint-url", help="S3-compatible endpoint")
    v.add_argument("--region", help="S3 region")

    s = sub.add_parser("snapshot", help="named snapshots of a mounted tree",
                       description="A snapshot records the exact version of every object "
                                   "under the mount's prefix, after uploading everything "
                                   "pending; it copies nothing. Records live in the bucket "
                                   f"at PREFIX{timeline.SNAPSHOTS_DIR}NAME.json.")
    ss = s.add_subparsers(dest="action", required=True)
    c = ss.add_parser("create", help="upload what is pending, then pin every version")
    c.add_argument("mountpoint")
    c.add_argument("name")
    c.add_argument("--timeout", default=None,
                   help="give up waiting for pending uploads after this many seconds")
    ls = ss.add_parser("list", help="the snapshots of the mounted prefix")
    ls.add_argument("mountpoint")
    ls.add_argument("--json", action="store_true", help="machine-readable output")
    d = ss.add_parser("delete", help="delete a snapshot's record (versions stay)")
    d.add_argument("mountpoint")
    d.add_argument("name")

    h = sub.add_parser("history", help="a file's versions, newest first, and who wrote them")
    h.add_argument("path", help="a path on a mount (it need not exist any more)")
    h.add_argument("--json", action="store_true",
                   help="a JSON list, one object per version, newest first")

    r = sub.add_parser("restore", help="put a file or a tree back as it was",
                       description="Restore PATH (a file or a whole tree, also one that was "
                                   "deleted) through the mount: an ordinary change, uploaded "
                                   "with the usual S3-wins rules. Entries under PATH that "
                                   "the target did not have are removed.")
    r.add_argument("path")
    _add_point(r, version=True)
    r.add_argument("--jobs", type=int, default=8, help="files in parallel (default 8)")

    f = sub.add_parser("fork", help="a new workspace from server-side copies of versions",
                       description="Copy the versions SOURCE had in a snapshot or at a time "
                                   "into DEST, server side, in parallel. Run it again after "
                                   "a crash or Ctrl-C: it resumes, copying only what DEST "
                                   "has never had. It writes DEST_PREFIX" + FORK_RECORD + ".")
    f.add_argument("source", help="s3://BUCKET[/PREFIX], or a mount point")
    f.add_argument("dest", help="s3://BUCKET[/PREFIX] on the same server, new or empty")
    _add_point(f, version=False)
    f.add_argument("--endpoint-url", help="S3-compatible endpoint")
    f.add_argument("--region", help="S3 region")
    f.add_argument("--jobs", type=int, default=32, help="copies in parallel (default 32)")


def _add_point(p: argparse.ArgumentParser, version: bool) -> None:
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--at", metavar="TIME", help="a UTC time, e.g. 2026-12-01T14:30:00Z")
    g.add_argument("--snapshot", metavar="NAME", help="a named snapshot")
    if version:
        g.add_argument("--version", metavar="ID", dest="version_id",
                       help="a version id from `s3fuse history` (a file only)")


def _fail(message: str, code: int = 1) -> int:
    print(f"s3fuse: {message}", file=sys.stderr, flush=True)
    return code


def run(args: argparse.Namespace) -> int:
    code = _run(args)
    leave_if_stopped(code)  # (after Ctrl-C: no wait for requests still in flight)
    return code


def _run(args: argparse.Namespace) -> int:
    handlers: dict[str, Callable[[argparse.Namespace], int]] = {
        "versioning": cmd_versioning, "snapshot": cmd_snapshot, "history": cmd_history,
        "restore": cmd_restore, "fork": cmd_fork}
    try:
        return handlers[args.command](args)
    except UsageError as exc:
        return _fail(str(exc), 2)
    except (S3FuseError, OSError) as exc:
        return _fail(str(exc))
    except KeyboardInterrupt:
        return _fail("stopped; no file is left half-written: run the same command "
                     "again to finish", 130)


def _mounted(path: str) -> tuple[Workspace, str]:
    mp, rel = find_mount(path)
    return open_mount(mp), rel


def _point(args: argparse.Namespace) -> tuple[int | None, str | None]:
    at = timeline.parse_when(args.at) if args.at is not None else None
    if args.snapshot is not None:
        timeline.check_snapshot_name(args.snapshot)
    return at, args.snapshot


# --- versioning ---------------------------------------------------------------------


def cmd_versioning(args: argparse.Namespace) -> int:
    store, _ = open_url(args.url, args.endpoint_url, args.region)
    try:
        if args.action == "enable":
            store.enable_versioning()
            print(f"s3fuse: {args.url} keeps old versions from now on "
                  "(see the README for what they cost)")
        else:
            print(f"{args.url}: versioning {store.versioning()}")
    finally:
        store.close()
    return 0


# --- snapshot -----------------------------------------------------------------------


def _bucket_of(ws: Workspace) -> str:
    parts = urlsplit(ws.status["source"])
    return parts.netloc if parts.scheme == "s3" else parts.path


def cmd_snapshot(args: argparse.Namespace) -> int:
    if args.action != "list":
        timeline.check_snapshot_name(args.name)
    mp, rel = find_mount(args.mountpoint)
    if rel:
        raise UsageError(f"{args.mountpoint} is not a mount point (snapshots are of a "
                         f"whole mount: {mp})")
    ws = open_mount(mp)
    try:
        if args.action == "create":
            return _snapshot_create(ws, args)
        if args.action == "list":
            return _snapshot_list(ws, args.json)
        snapshots.delete(ws.store, ws.prefix, args.name)
        print(f"s3fuse: deleted snapshot {args.name} of {ws.where}")
        return 0
    finally:
        ws.close()


def _snapshot_create(ws: Workspace, args: argparse.Namespace) -> int:
    timeline.require_versioning(ws.store, "snapshot create")
    if ws.status.get("read_only"):
        raise UsageError(f"{ws.mountpoint} is mounted read-only; snapshot it from a "
                         "writable mount")
    timeout = None if args.timeout is None else parse_seconds(args.timeout, "--timeout")
    try:
        result = client.wait_for_drain(ws.mountpoint, timeout, None, "syncing")
    except KeyboardInterrupt:
        return client.stopped_waiting(ws.mountpoint)
    if result["state"] != "done":
        return _fail("no snapshot taken: " + client.gave_up(ws.mountpoint, result, False))
    at = time.time_ns()
    started = time.monotonic()
    made = snapshots.create(ws.store, _bucket_of(ws), ws.prefix, args.name, at)
    if made.lifecycle_warning:
        print(f"s3fuse: warning: {made.lifecycle_warning}", file=sys.stderr, flush=True)
    objects = made.snapshot.objects
    print(f"s3fuse: snapshot {args.name} of {ws.where}: "
          f"{words.plural(len(objects), 'object')} "
          f"({words.size(sum(p.size for p in objects))}) as of "
          f"{timeline.format_when(made.snapshot.created_ns)}, "
          f"in {words.duration(time.monotonic() - started)}")
    return 0


def _snapshot_list(ws: Workspace, as_json: bool) -> int:
    timeline.require_versioning(ws.store, "snapshot list")
    found = snapshots.listing(ws.store, ws.prefix)

    def line(s: dict) -> str:
        if "error" in s:
            return f"{s['name']}  ({s['error']})"
        return (f"{s['name']}  {s['created']}  {words.plural(s['objects'], 'object')} "
                f"({words.size(s['bytes'])})")

    return _print_list(found, as_json, f"no snapshots of {ws.where}", line)


def _print_list(items: list[dict], as_json: bool, empty: str,
                line: Callable[[dict], str]) -> int:
    """A command's list: JSON (a list, as it is), or one line per item."""
    if as_json:
        print(json.dumps(items, indent=2))
    elif not items:
        print(empty)
    for item in items if not as_json else ():
        print(line(item))
    return 0


# --- history ------------------------------------------------------------------------


def cmd_history(args: argparse.Namespace) -> int:
    ws, rel = _mounted(args.path)
    try:
        if not rel:
            raise UsageError("history is of a file: give a path inside the mount")
        found = history.versions(ws, rel)
        if not found and os.path.isdir(args.path):
            found = history.versions(ws, rel + "/")
    finally:
        ws.close()

    def line(v: dict) -> str:
        if v["deleted"]:
            return f"{v['time']}  {'deleted':>10}  {v['version_id']}"
        return (f"{v['time']}  {words.size(v['size']):>10}  {v['version_id']}  "
                f"{v['writer']}{'  (current)' if v['current'] else ''}")

    return _print_list(found, args.json,
                       f"{args.path}: no versions in the bucket (not uploaded yet?)", line)


# --- restore ------------------------------------------------------------------------


def cmd_restore(args: argparse.Namespace) -> int:
    at, name = _point(args)
    ws, rel = _mounted(args.path)
    try:
        timeline.require_versioning(ws.store, "restore")
        if ws.status.get("read_only"):
            raise UsageError(f"{ws.mountpoint} is mounted read-only")
        if args.version_id is not None:
            target = {rel: _one_version(ws, rel, args.version_id)}
            label = f"version {args.version_id}"
        else:
            target = snapshots.pinned(ws.store, ws.prefix, rel, at_ns=at, snapshot=name)
            label = f"snapshot {name}" if name else timeline.format_when(at or 0)
        restorer = Restorer(ws, rel, target, jobs=max(1, args.jobs))
        progress = Progress("restoring", restorer.total())
        try:
            report = restorer.run(progress.show)
        finally:
            progress.end()
    finally:
        ws.close()
    what = args.path if rel else f"{ws.mountpoint} (the whole mount)"
    if not target:
        print(f"s3fuse: {what} did not exist at {label}: removed ({report.removed} entries)")
        return 0
    print(f"s3fuse: restored {what} to {label}: {words.plural(report.written, 'file')} "
          f"written, {report.unchanged} unchanged, {report.removed} removed, "
          f"{words.plural(report.directories, 'directory', 'directories')}; it uploads "
          f"like any change (`s3fuse sync {ws.mountpoint}` waits for it)")
    if report.skipped:
        print(f"s3fuse: skipped {words.plural(len(report.skipped), 'key')} that cannot be "
              f"paths, as the mount does (first: {report.skipped[0]!r})", file=sys.stderr)
    return 0


def _one_version(ws: Workspace, rel: str, version_id: str) -> timeline.Pinned:
    if not rel or os.path.isdir(os.path.join(ws.mountpoint, rel)):
        raise UsageError("--version restores a file: give the file's path (for a tree, "
                         "use --at or --snapshot)")
    try:
        info = ws.store.head(ws.key(rel), version_id=version_id)
    except NoSuchKey:
        raise UsageError(f"{rel} has no version {version_id!r} (see `s3fuse history`)"
                         ) from None
    return timeline.Pinned(rel, version_id, info.etag, info.size, info.mtime_ns)


# --- fork ---------------------------------------------------------------------------


def _side(url_or_mount: str, endpoint: str | None, region: str | None
          ) -> tuple[Side, str | None]:
    """A fork's end, and the endpoint it was reached at (a mount's own, for a
    mount point given as SOURCE, unless --endpoint-url says otherwise)."""
    if "://" not in url_or_mount:
        mp, rel = find_mount(url_or_mount)
        if rel:
            raise UsageError(f"{url_or_mount} is not a mount point")
        ws = open_mount(mp)
        return (Side(ws.store, _bucket_of(ws), ws.prefix, ws.status["source"]),
                endpoint or ws.status.get("endpoint_url"))
    if not url_or_mount.startswith("s3://"):
        raise UsageError(f"fork takes s3://BUCKET[/PREFIX] URLs (or a mount point), not "
                         f"{url_or_mount!r}")
    store, prefix = open_url(url_or_mount, endpoint, region)
    return Side(store, urlsplit(url_or_mount).netloc, prefix, url_or_mount), endpoint


def cmd_fork(args: argparse.Namespace) -> int:
    at, name = _point(args)
    if not args.dest.startswith("s3://"):
        raise UsageError(f"DEST must be an s3://BUCKET[/PREFIX] URL, not {args.dest!r}")
    open_store(args.dest)[0].close()  # a malformed URL fails before anything is read
    source, endpoint = _side(args.source, args.endpoint_url, args.region)
    dest = None
    try:
        timeline.require_versioning(source.store, "fork")
        dest = _side(args.dest, endpoint, args.region)[0]
        if (dest.bucket, dest.prefix) == (source.bucket, source.prefix) or (
                dest.bucket == source.bucket and (dest.prefix.startswith(source.prefix)
                                                  or source.prefix.startswith(dest.prefix))):
            raise UsageError("DEST must not be SOURCE, nor inside it, nor hold it")
        pins = snapshots.pinned(source.store, source.prefix, at_ns=at, snapshot=name)
        point = {"snapshot": name} if name else {"at": timeline.format_when(at or 0)}
        progress = Progress("forking", len(pins), "object")
        try:
            report = fork(source, dest, point, pins, jobs=args.jobs,
                          progress=lambda done, total: progress.show(done))
        finally:
            progress.end()
    except KeyboardInterrupt:
        return _fail(f"stopped; run the same command again to resume (it copies only what "
                     f"{args.dest} lacks)", 130)
    except StoreError as exc:
        return _fail(f"{exc}; run the same command again to resume")
    finally:
        source.store.close()
        if dest is not None:
            dest.store.close()
    rate = report.copied / report.seconds if report.seconds else 0.0
    swept = (f"; removed {report.swept} of its copies made over changes in DEST"
             if report.swept else "")
    print(f"s3fuse: forked {source.url} ({point.get('snapshot') or point.get('at')}) into "
          f"{dest.url}: {words.plural(report.copied, 'object')} copied"
          f"{f', {report.present} there already' if report.present else ''} "
          f"in {words.duration(report.seconds)} ({rate:.0f}/s)"
          f"{' (resumed)' if report.resumed else ''}"
          f"{swept}")
    return 0
