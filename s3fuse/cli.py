"""Command line: ``s3fuse mount | umount | sync | status | fsck | demo``, and the
time-travel commands ``versioning | snapshot | history | restore | fork``
(``cli_timetravel``).

``mount`` without ``--foreground`` starts the daemon as a child process and returns
once the mount is ready (exit 0), or prints the daemon's one-line error (exit 1).
The CLI talks to a running daemon through extended attributes on the mount's root
(see ``control``), so it needs no socket and the filesystem's own permission checks
apply. Commands that wait (``sync``, ``umount``) never block in the kernel: they start
a drain, then poll it, showing progress, so Ctrl-C stops the waiting at once.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
import time
from urllib.parse import urlsplit

from . import __version__, client, words
from .config import Settings, default_cache_dir, parse_mode, parse_seconds, parse_size
from .control import CONTROL_KEEP_PENDING, CONTROL_STATUS
from .errors import S3FuseError, UsageError

# -o options that mount(8) and fstab pass along and that mean nothing to us (reads
# never move atime here: the atime family is accepted and has nothing to change)
_IGNORED_O = {"_netdev", "nofail", "rw", "auto", "noauto", "user", "users", "dev", "nodev",
              "suid", "nosuid", "exec", "noexec", "defaults", "async", "atime", "noatime",
              "relatime", "norelatime", "nodiratime", "diratime", "strictatime",
              "nostrictatime", "lazytime", "nolazytime"}
_OPTION_NAMES = {
    "endpoint_url", "region", "cache_dir", "cache_size", "flush_window", "metadata_ttl",
    "poll_interval", "uid", "gid", "file_mode", "dir_mode", "allow_other", "fsync",
    "log_level", "drain_timeout", "max_uploads", "foreground", "metrics_addr",
}
# -o flags that set a boolean option: -o NAME -> args.ATTRIBUTE = True
_FLAG_O = {"allow_other": "allow_other", "foreground": "foreground", "ro": "read_only",
           "read_only": "read_only", "nonempty": "nonempty",
           "types_from_listing": "types_from_listing"}


def _fail(message: str, code: int = 1) -> int:
    print(f"s3fuse: {message}", file=sys.stderr, flush=True)
    return code


def _add_mount_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", help="s3://BUCKET[/PREFIX], or file:///PATH (the embedded "
                                  "local store)")
    p.add_argument("mountpoint", help="an existing, empty directory (see --nonempty)")
    p.add_argument("--endpoint-url", help="S3-compatible endpoint (MinIO, Ceph RGW, R2, ...); "
                                          "default: AWS")
    p.add_argument("--region", help="S3 region (default: from the AWS config, or us-east-1)")
    p.add_argument("--cache-dir", help="journal and cache directory, one mount at a time "
                                       "(default: /var/cache/s3fuse/<source hash> as root, "
                                       "~/.cache/s3fuse/<source hash> otherwise)")
    p.add_argument("--cache-size", default="10G", help="clean data kept cached (default 10G)")
    p.add_argument("--flush-window", default="60",
                   help="seconds a changed file stays quiet before it is uploaded (default 60)")
    p.add_argument("--metadata-ttl", default="1",
                   help="seconds the kernel may cache attributes and names (default 1)")
    p.add_argument("--poll-interval", default="30",
                   help="seconds between re-listings of directories in use (default 30)")
    p.add_argument("--uid", type=int, help="owner of objects without attributes "
                                           "(default: the mounting user)")
    p.add_argument("--gid", type=int, help="group of objects without attributes "
                                           "(default: the mounting user's group)")
    p.add_argument("--file-mode", default="0644",
                   help="mode of files without attributes (default 0644)")
    p.add_argument("--dir-mode", default="0755",
                   help="mode of directories without attributes (default 0755)")
    p.add_argument("--allow-other", action="store_true",
                   help="let other users use the mount (permissions are still checked)")
    p.add_argument("--read-only", action="store_true",
                   help="mount read-only (also -o ro): every change fails with EROFS")
    p.add_argument("--nonempty", action="store_true",
                   help="mount over a directory that has entries (hidden while mounted)")
    p.add_argument("--types-from-listing", action="store_true",
                   help="readdir calls small objects never read regular files, so find makes "
                   "no HEAD for them (a symlink among them shows as a file in d_type until "
                   "looked up; see README)")
    p.add_argument("--metrics-addr", metavar="HOST:PORT",
                   help="serve Prometheus metrics at http://HOST:PORT/metrics")
    p.add_argument("--fsync", choices=("local", "upload"), default="local",
                   help="local: fsync makes data durable on this host (default); upload: "
                        "fsync waits until the object is in the bucket")
    p.add_argument("--drain-timeout", default="600",
                   help="seconds unmount/SIGTERM wait for pending uploads before exiting "
                        "with them kept in the journal (default 600)")
    p.add_argument("--max-uploads", type=int, default=8,
                   help="uploads in parallel (default 8)")
    p.add_argument("--log-level", default="INFO",
                   choices=("DEBUG", "INFO", "WARNING", "ERROR"), help="default INFO")
    p.add_argument("--foreground", "-f", action="store_true",
                   help="stay in the foreground and log to stderr")
    p.add_argument("-o", dest="options", action="append", default=[],
                   help="comma-separated options in mount(8) style, e.g. "
                        "-o endpoint_url=http://127.0.0.1:9000,flush_window=30,allow_other")


def _apply_o_options(args: argparse.Namespace) -> list[str]:
    """Fold ``-o a=b,c`` into ``args``; returns FUSE options to pass through."""
    passthrough: list[str] = []
    for group in args.options:
        for item in filter(None, (x.strip() for x in group.split(","))):
            name, _, value = item.partition("=")
            key = name.replace("-", "_")
            if name in _IGNORED_O or name.startswith("x-systemd.") or name.startswith("comment="):
                continue
            if key in _FLAG_O and not value:
                setattr(args, _FLAG_O[key], True)
            elif key in _OPTION_NAMES:
                if not value:
                    raise UsageError(f"option {name} needs a value ({name}=...)")
                if key in ("uid", "gid", "max_uploads"):
                    try:
                        value = int(value)
                    except ValueError:
                        raise UsageError(f"invalid {name} {value!r}: expected a number") \
                            from None
                setattr(args, key, value)
            elif name == "default_permissions":
                pass  # always on
            else:
                raise UsageError(f"unknown option -o {name}")
    return passthrough


def settings_from(args: argparse.Namespace) -> Settings:
    fuse_opts = _apply_o_options(args)
    source = args.source
    if not (source.startswith("s3://") or source.startswith("file://")
            or source.startswith("memory://")):
        raise UsageError(f"invalid source {source!r}: expected s3://BUCKET[/PREFIX] or "
                         "file:///PATH")
    if args.fsync not in ("local", "upload"):
        raise UsageError(f"invalid fsync mode {args.fsync!r}: expected local or upload")
    if str(args.log_level).upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise UsageError(f"invalid log level {args.log_level!r}")
    cache_dir = args.cache_dir
    if not cache_dir:
        cache_dir = default_cache_dir(source, args.endpoint_url)
    max_uploads = int(args.max_uploads)
    if max_uploads < 1:
        raise UsageError("--max-uploads must be at least 1")
    if args.endpoint_url is not None:
        check_endpoint_url(args.endpoint_url)
    if args.metrics_addr is not None:
        parse_host_port(args.metrics_addr, "--metrics-addr")
    return Settings(
        source=source,
        mountpoint=os.path.abspath(args.mountpoint),
        cache_dir=os.path.abspath(cache_dir),
        endpoint_url=args.endpoint_url,
        region=args.region,
        cache_size_bytes=parse_size(args.cache_size, "--cache-size"),
        flush_window_s=parse_seconds(args.flush_window, "--flush-window"),
        metadata_ttl_s=parse_seconds(args.metadata_ttl, "--metadata-ttl"),
        poll_interval_s=parse_seconds(args.poll_interval, "--poll-interval", minimum=0.1),
        uid=os.getuid() if args.uid is None else int(args.uid),
        gid=os.getgid() if args.gid is None else int(args.gid),
        file_mode=parse_mode(args.file_mode, "--file-mode"),
        dir_mode=parse_mode(args.dir_mode, "--dir-mode"),
        allow_other=bool(args.allow_other),
        fsync_upload=args.fsync == "upload",
        max_uploads=max_uploads,
        drain_timeout_s=parse_seconds(args.drain_timeout, "--drain-timeout"),
        log_level=str(args.log_level).upper(),
        fuse_options=tuple(fuse_opts),
        read_only=bool(args.read_only),
        nonempty=bool(args.nonempty),
        types_from_listing=bool(args.types_from_listing),
        metrics_addr=args.metrics_addr,
    )


def check_endpoint_url(url: str) -> None:
    """An endpoint is ``http(s)://HOST[:PORT][/PATH]``: anything else fails here, in
    one line, before the daemon starts."""
    bad = f"invalid --endpoint-url {url!r}: expected http://HOST[:PORT] or https://HOST[:PORT]"
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port out of range
    except ValueError:
        raise UsageError(bad) from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(bad)


def parse_host_port(text: str, what: str) -> tuple[str, int]:
    host, sep, port = str(text).rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise UsageError(f"invalid {what} {text!r}: expected HOST:PORT, e.g. 127.0.0.1:9464")
    return host, int(port)


def setup_logging(level: str) -> None:
    logging.basicConfig(level=getattr(logging, level),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # botocore logs request headers at DEBUG, signatures included: keep it quiet
    for noisy in ("botocore", "boto3", "urllib3", "s3transfer"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def cmd_mount(args: argparse.Namespace, quiet: bool = False) -> int:
    """``quiet``: say nothing on success (as mount(8) helpers do)."""
    try:
        settings = settings_from(args)
    except UsageError as exc:
        return _fail(str(exc), 2)
    if args.foreground:
        return _run_foreground(settings)
    return _spawn_background(settings, quiet)


def _run_foreground(settings: Settings, ready_fd: int | None = None) -> int:
    """Run the daemon in this process; ``ready_fd``: a pipe to tell the mount
    command READY, or ERROR and why (``_spawn_background``)."""
    from . import daemon

    setup_logging(settings.log_level)

    def report(line: str) -> None:
        if ready_fd is not None:
            try:
                os.write(ready_fd, (line + "\n").encode())
                os.close(ready_fd)
            except OSError:
                pass

    try:
        return daemon.run(settings, ready=lambda: report("READY"))
    except UsageError as exc:
        report(f"ERROR {exc}")
        return _fail(str(exc))
    except S3FuseError as exc:
        report(f"ERROR {exc}")
        return _fail(str(exc))


def _spawn_background(settings: Settings, quiet: bool = False) -> int:
    """Start the daemon as a forked child of this process (one Python start-up, not
    two: about 0.2 s of a mount) and wait for its first line on a pipe: READY, or
    ERROR and why. The child runs in a session of its own, reads /dev/null and
    writes to the log, and keeps no other descriptor of ours."""
    os.makedirs(settings.cache_dir, mode=0o700, exist_ok=True)
    log_path = os.path.join(settings.cache_dir, "s3fuse.log")
    log_fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    os.chmod(log_path, 0o600)
    read_fd, write_fd = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        _daemon_child(settings, log_fd, write_fd)  # never returns
    os.close(log_fd)
    os.close(write_fd)
    chunks = []
    while True:
        chunk = os.read(read_fd, 4096)
        if not chunk:
            break
        chunks.append(chunk)
    os.close(read_fd)
    answer = b"".join(chunks).decode(errors="replace").strip()
    if answer == "READY":
        if quiet:
            return 0
        print(f"s3fuse: mounted {settings.source} at {settings.mountpoint} "
              f"(pid {pid}, log {log_path}); unmount with: s3fuse umount "
              f"{settings.mountpoint}")
        return 0
    code = _reap(pid, timeout_s=30)
    if answer.startswith("ERROR "):
        return _fail(answer[len("ERROR "):])
    return _fail(f"the daemon exited (status {code}) before mounting; see {log_path}")


def _daemon_child(settings: Settings, log_fd: int, ready_fd: int) -> None:
    """The forked daemon: detach, then run until unmounted; never returns."""
    code = 1
    try:
        os.setsid()
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(log_fd, 1)
        os.dup2(log_fd, 2)
        # (as a fresh process would: nothing the caller left open stays open here)
        os.closerange(3, ready_fd)
        os.closerange(ready_fd + 1, os.sysconf("SC_OPEN_MAX"))
        code = _run_foreground(settings, ready_fd)
    except BaseException:  # noqa: BLE001 - whatever happens, the child must not return
        import traceback

        traceback.print_exc()
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def _reap(pid: int, timeout_s: float) -> int | None:
    """The exit status of child ``pid``, waiting at most ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        if time.monotonic() > deadline:
            return None
        time.sleep(0.05)


def _alive(pid: int) -> bool:
    """True while the daemon runs (a zombie waiting to be reaped has finished)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


def cmd_umount(args: argparse.Namespace) -> int:
    mp = os.path.abspath(args.mountpoint)
    try:
        mp = client.require_mount(args.mountpoint)
        status = client.control_json(mp, CONTROL_STATUS)
        pid = int(status["pid"])
        if args.keep_pending:
            client.control_set(mp, CONTROL_KEEP_PENDING, b"1")
            status = client.control_json(mp, CONTROL_STATUS)
        elif not status.get("read_only"):
            timeout = status["drain_timeout_s"] if args.timeout is None else \
                parse_seconds(args.timeout, "--timeout")
            result = client.wait_for_drain(mp, timeout, None, "unmounting")
            if result["state"] != "done":
                return _fail(client.gave_up(mp, result, unmounting=True))
    except UsageError as exc:
        return _fail(str(exc))
    except KeyboardInterrupt:
        return client.stopped_waiting(mp)
    res = subprocess.run(["fusermount3", "-u", mp], capture_output=True, text=True,
                         check=False, timeout=60)
    if res.returncode != 0:
        detail = (res.stderr.strip().splitlines() or ["failed"])[-1]
        if args.keep_pending:
            try:
                client.control_set(mp, CONTROL_KEEP_PENDING, b"0")
            except UsageError:
                pass
            return _fail(f"could not unmount {mp}: {detail}")
        return _fail(f"could not unmount {mp}: {detail} (everything pending was uploaded)")
    deadline = time.monotonic() + 120
    told = False
    while time.monotonic() < deadline and _alive(pid):
        if not told and time.monotonic() > deadline - 115:
            print(f"s3fuse: unmounted {mp}; waiting for the daemon (pid {pid}) to finish",
                  file=sys.stderr, flush=True)
            told = True
        time.sleep(0.05)
    if args.keep_pending and (status["dirty_files"] or status["pending_ops"]):
        print(f"s3fuse: unmounted {mp}; {client.pending_of(status)} kept in the journal in "
              f"{status['cache_dir']}; the next mount of this cache directory uploads them")
    else:
        print(f"s3fuse: unmounted {mp}; everything is in the bucket")
    return 0


def cmd_sync(args: argparse.Namespace) -> int:
    mp = os.path.abspath(args.mountpoint)
    try:
        mp = client.require_mount(args.mountpoint)
        paths = client.relative_paths(mp, args.paths) if args.paths else None
        timeout = None if args.timeout is None else parse_seconds(args.timeout, "--timeout")
        status = client.control_json(mp, CONTROL_STATUS)
        if status.get("read_only"):  # the kernel refuses the control setxattr there
            if status["dirty_files"] or status["pending_ops"]:
                return _fail(f"{mp} is mounted read-only; {client.pending_of(status)} left by an "
                             f"earlier mount go up in the background (`s3fuse status {mp}`)")
            print(f"s3fuse: {mp} is mounted read-only; nothing to upload")
            return 0
        result = client.wait_for_drain(mp, timeout, paths, "syncing")
    except UsageError as exc:
        return _fail(str(exc))
    except KeyboardInterrupt:
        return client.stopped_waiting(mp)
    if result["state"] != "done":
        return _fail(client.gave_up(mp, result, unmounting=False))
    what = "everything pending" if not paths else "everything pending under " + \
        ", ".join(args.paths)
    print(f"s3fuse: {what} at {mp} is in the bucket")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    try:
        mp = client.mount_root(args.mountpoint)
        status = client.control_json(mp, CONTROL_STATUS)
    except UsageError as exc:
        return _fail(str(exc))
    if args.json:
        print(json.dumps(status, indent=2, sort_keys=True, allow_nan=False))
        return 0
    plural = words.plural
    print(f"{mp}: {status['source']} (pid {status['pid']}"
          f"{', read-only' if status.get('read_only') else ''})")
    busy = status["dirty_files"] or status["pending_ops"]
    print(f"  pending: {client.pending_of(status)}" +
          (f"; oldest change {words.duration(status['oldest_pending_age_s'])} ago"
           if busy else ""))
    line = f"  uploads in flight: {status['uploads_in_flight']}"
    if status.get("retrying_files"):
        line += f"; {plural(status['retrying_files'], 'file')} waiting to retry"
    print(line)
    if busy and status.get("last_error"):
        print(f"  last error: {client.error_words(status['last_error'])}")
    if status.get("fork") and not status["fork"]["finished"]:
        print(f"  fork: {status['fork']['copied']} of {status['fork']['total']} copied "
              "(as of the mount's last look; the rest is read from the source)")
    print(f"  cache: {words.size(status['cache_bytes'])} of "
          f"{words.size(status['cache_limit_bytes'])}")
    caps = status["capabilities"]
    print("  conflict detection: " + ("conditional uploads" if caps["conditional_put"]
                                      else "best effort (the server ignores conditions)"))
    print(f"  conflicts: {status.get('conflicts_total', len(status['conflicts']))}")
    for c in status["conflicts"][-10:]:
        print(f"    {c['path']} ({c['reason']})\n      -> {c['lost_found']}")
    print(f"  not exported: {len(status['not_exported'])}; skipped keys: "
          f"{len(status['skipped_keys'])}")
    for item in (status["not_exported"] + status["skipped_keys"])[:10]:
        print(f"    {item.get('path') or item.get('key')}: {item['reason']}")
    print(f"  recent errors: {len(status['errors'])}")
    for err in status["errors"][-5:]:
        print(f"    {err['operation']} {err['path']}: {err['message']}")
    return 0


def cmd_fsck(args: argparse.Namespace) -> int:
    """Offline: compare the journal and cache with the bucket; exit 0 clean (or all
    repaired), 1 problems remain, 2 could not check (in use, wrong source, ...)."""
    from . import fsck

    try:
        return fsck.run(args.source, cache_dir=args.cache_dir, endpoint_url=args.endpoint_url,
                        region=args.region, repair=args.repair, as_json=args.json)
    except UsageError as exc:
        return _fail(str(exc), 2)


def cmd_demo(args: argparse.Namespace) -> int:
    """Mount a small demo tree on the embedded file:// backend."""
    store_root = "/var/lib/s3fuse-demo/bucket" if os.geteuid() == 0 else \
        os.path.expanduser("~/.local/share/s3fuse-demo/bucket")
    mountpoint = "/mnt/s3fuse-demo" if os.geteuid() == 0 else \
        os.path.expanduser("~/s3fuse-demo")
    os.makedirs(store_root, exist_ok=True)
    os.makedirs(mountpoint, exist_ok=True)
    if os.path.ismount(mountpoint):
        print(f"s3fuse demo: already mounted at {mountpoint}; unmount with: "
              f"s3fuse umount {mountpoint}")
        return 0
    from .store.file import FileStore

    store = FileStore(store_root)
    try:
        store.enable_versioning()  # time travel from the first minute (README)
        if not store.list("", None).objects:
            store.put("README.txt", b"Hello from s3fuse. Every file here is a plain object "
                      b"in the bucket directory " + store_root.encode() + b".\n", {})
            store.put("docs/guide.md", b"# s3fuse demo\n\nEdit, rename, git init: "
                      b"it behaves like a disk.\n", {})
            store.put("data/numbers.csv", b"n,square\n" + b"".join(
                f"{i},{i * i}\n".encode() for i in range(1, 11)), {})
    finally:
        store.close()
    source = f"file://{store_root}"
    parser = build_parser()
    argv = ["mount", source, mountpoint, "--flush-window", "5"]
    return cmd_mount(parser.parse_args(argv))


class _Parser(argparse.ArgumentParser):
    """Usage errors are one line (docs/SEMANTICS.md, "Errors"), pointing at --help."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"s3fuse: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="s3fuse", description="Mount an S3 bucket as a POSIX "
                                "filesystem: local journal and cache, whole-object uploads, "
                                "atomic rename, S3 wins on conflict.")
    p.add_argument("--version", action="version", version=f"s3fuse {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    m = sub.add_parser("mount", help="mount a bucket", description="Mount a bucket.")
    _add_mount_options(m)
    u = sub.add_parser("umount", help="upload everything pending, then unmount",
                       description="Upload everything pending, showing progress, then "
                                   "unmount. If the bucket stays unreachable, the mount "
                                   "stays; Ctrl-C stops the waiting, not the mount.")
    u.add_argument("mountpoint")
    u.add_argument("--timeout", default=None,
                   help="give up waiting for the bucket after this many seconds (default: "
                        "the mount's --drain-timeout, which also bounds a systemd stop)")
    u.add_argument("--keep-pending", action="store_true",
                   help="unmount without waiting for the bucket: what is pending stays in "
                        "the journal, and the next mount of the cache directory uploads it")
    s = sub.add_parser("sync", help="upload everything pending now and wait")
    s.add_argument("mountpoint")
    s.add_argument("paths", nargs="*", help="limit to these paths (default: everything)")
    s.add_argument("--timeout", default=None,
                   help="give up after this many seconds (default: the mount's drain timeout)")
    st = sub.add_parser("status", help="pending uploads, conflicts, errors")
    st.add_argument("mountpoint", help="the mount point, or any path inside the mount")
    st.add_argument("--json", action="store_true", help="machine-readable output")
    sub.add_parser("demo", help="mount a demo tree on the embedded file:// backend")
    fk = sub.add_parser("fsck", help="offline: compare the journal and cache with the bucket",
                        description="Compare an unmounted cache directory (journal and "
                                    "cache files) with the bucket; report the differences "
                                    "and, with --repair, fix what is safe to fix.")
    fk.add_argument("source", help="the mount's source, s3://BUCKET[/PREFIX] or file:///PATH")
    fk.add_argument("--cache-dir", help="the mount's cache directory (default: the one "
                                        "s3fuse mount uses for this source)")
    fk.add_argument("--endpoint-url", help="S3-compatible endpoint, as given to mount")
    fk.add_argument("--region", help="S3 region")
    fk.add_argument("--repair", action="store_true",
                    help="fix what is safe: the bucket wins for clean files; data pending "
                         "upload is never dropped")
    fk.add_argument("--json", action="store_true", help="machine-readable output")
    from . import cli_timetravel

    cli_timetravel.add_parsers(sub)
    return p


_COMMANDS = ("mount", "umount", "sync", "status", "demo", "mount-helper")


def mount_helper_argv(argv: list[str]) -> list[str]:
    """mount(8) runs ``mount.fuse.s3fuse SOURCE MOUNTPOINT [-o OPTS] [-n] [-s] [-v]``
    (and mount.fuse3 runs ``s3fuse SOURCE MOUNTPOINT -o OPTS``): turn that into a
    ``mount`` command line. -n/-s/-v/-f mean nothing to us and are dropped."""
    out = ["mount"]
    i = 0
    while i < len(argv):
        a = argv[i]
        if a == "-o" and i + 1 < len(argv):
            out += ["-o", argv[i + 1]]
            i += 2
            continue
        if a.startswith("-o") and len(a) > 2:
            out += ["-o", a[2:]]
        elif a in ("-n", "-s", "-v", "-f", "--"):
            pass
        else:
            out.append(a)
        i += 1
    return out


def main(argv: list[str] | None = None) -> int:
    try:
        return _main(argv)
    except BrokenPipeError:
        # the reader went away (``s3fuse status | head``): as with any Unix tool, stop
        # quietly; point stdout at /dev/null so that the exit does not fail to flush it
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 128 + signal.SIGPIPE


def _main(argv: list[str] | None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    helper = False  # run by mount(8) as mount.fuse.s3fuse: quiet on success
    if argv and argv[0] == "mount-helper":
        argv, helper = mount_helper_argv(argv[1:]), True
    elif argv and "://" in argv[0] and argv[0] not in _COMMANDS:
        argv, helper = mount_helper_argv(argv), True
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "mount":
        return cmd_mount(args, helper)
    if args.command == "umount":
        return cmd_umount(args)
    if args.command == "sync":
        return cmd_sync(args)
    if args.command == "status":
        return cmd_status(args)
    if args.command == "demo":
        return cmd_demo(args)
    if args.command == "fsck":
        return cmd_fsck(args)
    from . import cli_timetravel

    if args.command in cli_timetravel.COMMANDS:
        return cli_timetravel.run(args)
    return _fail(f"unknown command {args.command}", 2)


if __name__ == "__main__":
    sys.exit(main())
