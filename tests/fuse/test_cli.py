"""The command line as a user meets it (SPEC §7, §8).

Bad input fails at once, with one clear line on stderr and a non-zero exit, before
anything is mounted; no secret ever shows up in what the user sees. The control
commands (umount, sync, status) refuse a directory that is not an s3fuse mount, and
``status --json`` reports the documented fields.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import boto3
import botocore.exceptions
import pytest
from mounts import make_mount, require_fuse
from servers import MotoServer, closed_port

pytestmark = pytest.mark.fuse

S3FUSE = os.path.join(os.path.dirname(sys.executable), "s3fuse")
SECRET = "s3fuse-test-SECRET-9d41c7e0b2"
FAST = 30  # seconds: every failing command must be well within this


def is_mounted(path: str) -> bool:
    with open("/proc/self/mounts") as f:
        return any(line.split()[1] == path for line in f)


def mount_lines(path: str) -> int:
    with open("/proc/self/mounts") as f:
        return sum(1 for line in f if line.split()[1] == path)


def cli(*args: str, env: dict[str, str] | None = None,
        timeout: float = FAST) -> subprocess.CompletedProcess[str]:
    return subprocess.run([S3FUSE, *args], capture_output=True, text=True, timeout=timeout,
                          env=env, check=False)


def assert_one_line_error(res: subprocess.CompletedProcess[str], *needles: str) -> str:
    """Non-zero exit, nothing on stdout, exactly one line on stderr, no traceback;
    returns that line."""
    assert res.returncode != 0, f"succeeded: {res.stdout} {res.stderr}"
    assert res.stdout.strip() == "", f"stdout: {res.stdout!r}"
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line on stderr, got:\n{res.stderr}"
    line = lines[0]
    assert line.startswith("s3fuse:"), line
    assert "Traceback" not in line
    for needle in needles:
        assert needle.lower() in line.lower(), f"{needle!r} not in {line!r}"
    return line


def assert_no_secret(res: subprocess.CompletedProcess[str], cache_dir: Path) -> None:
    assert SECRET not in res.stdout
    assert SECRET not in res.stderr
    # nor in the daemon's log, which the user is pointed to
    if cache_dir.exists():
        for p in cache_dir.rglob("*.log"):
            assert SECRET not in p.read_text(errors="replace"), p


@pytest.fixture
def mp(tmp_path: Path) -> Path:
    d = tmp_path / "mnt"
    d.mkdir()
    yield d
    if is_mounted(str(d)):  # the command under test mounted it after all: clean up
        subprocess.run([S3FUSE, "umount", str(d)], capture_output=True, timeout=60,
                       check=False)
    if is_mounted(str(d)):
        subprocess.run(["fusermount3", "-uz", str(d)], capture_output=True, timeout=30,
                       check=False)


@pytest.fixture
def bucket_dir(tmp_path: Path) -> Path:
    d = tmp_path / "bucket"
    d.mkdir()
    return d


def s3_env(**extra: str) -> dict[str, str]:
    """The session's fake credentials (set by moto_endpoint), with a recognizable secret."""
    return {**os.environ, "AWS_SECRET_ACCESS_KEY": SECRET, **extra}


# --- the bucket and the endpoint ------------------------------------------------------


def test_unknown_bucket(moto_endpoint: str, mp: Path, tmp_path: Path) -> None:
    name = f"no-such-bucket-{uuid.uuid4().hex[:12]}"
    cache = tmp_path / "cache"
    res = cli("mount", f"s3://{name}/prefix", str(mp), "--cache-dir", str(cache),
              "--endpoint-url", moto_endpoint, env=s3_env())
    assert_one_line_error(res, name)
    assert not is_mounted(str(mp))
    assert_no_secret(res, cache)


def test_wrong_credentials(mp: Path, tmp_path: Path) -> None:
    # moto accepts any credentials unless told to check them: this server lets one
    # request through unauthenticated (creating the bucket), then checks every request.
    env = s3_env(AWS_ACCESS_KEY_ID="AKIAWRONGWRONGWRONG0", AWS_DEFAULT_REGION="us-east-1",
                 AWS_EC2_METADATA_DISABLED="true",
                 AWS_CONFIG_FILE="/nonexistent/s3fuse-tests/config",
                 AWS_SHARED_CREDENTIALS_FILE="/nonexistent/s3fuse-tests/credentials",
                 NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost")
    with MotoServer(env={**env, "INITIAL_NO_AUTH_ACTION_COUNT": "1"}) as server:
        client = boto3.client("s3", endpoint_url=server.endpoint, region_name="us-east-1",
                              aws_access_key_id="AKIAWRONGWRONGWRONG0",
                              aws_secret_access_key=SECRET)
        client.create_bucket(Bucket="guarded")
        try:
            client.head_bucket(Bucket="guarded")
        except botocore.exceptions.ClientError:
            pass
        else:
            pytest.skip("this moto does not check credentials (INITIAL_NO_AUTH_ACTION_COUNT "
                        "ignored); cannot test wrong credentials")
        finally:
            client.close()
        cache = tmp_path / "cache"
        res = cli("mount", "s3://guarded", str(mp), "--cache-dir", str(cache),
                  "--endpoint-url", server.endpoint, env=env)
    line = assert_one_line_error(res, "guarded")
    assert any(w in line.lower() for w in ("denied", "credential", "forbidden")), line
    assert not is_mounted(str(mp))
    assert_no_secret(res, cache)


def test_unreachable_endpoint(mp: Path, tmp_path: Path) -> None:
    port = closed_port()
    endpoint = f"http://127.0.0.1:{port}"
    cache = tmp_path / "cache"
    env = s3_env(AWS_ACCESS_KEY_ID="testing-access-key", AWS_DEFAULT_REGION="us-east-1",
                 AWS_EC2_METADATA_DISABLED="true",
                 AWS_CONFIG_FILE="/nonexistent/s3fuse-tests/config",
                 AWS_SHARED_CREDENTIALS_FILE="/nonexistent/s3fuse-tests/credentials",
                 NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost")
    start = time.monotonic()
    res = cli("mount", "s3://some-bucket", str(mp), "--cache-dir", str(cache),
              "--endpoint-url", endpoint, env=env, timeout=60)
    elapsed = time.monotonic() - start
    assert_one_line_error(res, f"127.0.0.1:{port}")
    assert elapsed < 20, f"took {elapsed:.1f} s to give up on a closed port"
    assert not is_mounted(str(mp))
    assert_no_secret(res, cache)


def test_missing_file_store(mp: Path, tmp_path: Path) -> None:
    root = tmp_path / "no-such-store"
    res = cli("mount", f"file://{root}", str(mp), "--cache-dir", str(tmp_path / "cache"))
    assert_one_line_error(res, str(root))
    assert not is_mounted(str(mp))
    assert not root.exists()


# --- the mount point and the cache directory -----------------------------------------


def test_missing_mount_point(bucket_dir: Path, tmp_path: Path) -> None:
    missing = tmp_path / "does-not-exist"
    res = cli("mount", f"file://{bucket_dir}", str(missing), "--cache-dir",
              str(tmp_path / "cache"))
    assert_one_line_error(res, str(missing))
    assert not missing.exists()
    assert not is_mounted(str(missing))


def test_mount_point_is_a_file(bucket_dir: Path, tmp_path: Path) -> None:
    target = tmp_path / "a-file"
    target.write_text("not a directory\n")
    res = cli("mount", f"file://{bucket_dir}", str(target), "--cache-dir",
              str(tmp_path / "cache"))
    assert_one_line_error(res, str(target))
    assert not is_mounted(str(target))
    assert target.read_text() == "not a directory\n"


def test_mount_twice(file_mount) -> None:
    m = file_mount
    with open(m.p("hello"), "w") as f:
        f.write("hi")
    # exactly the same command a second time
    res = subprocess.run(m.args(), capture_output=True, text=True, timeout=FAST, check=False)
    assert_one_line_error(res, m.path)
    assert mount_lines(m.path) == 1
    # the first mount is untouched and still serves
    with open(m.p("hello")) as f:
        assert f.read() == "hi"
    res = cli("status", m.path)
    assert res.returncode == 0, res.stderr


def test_cache_dir_in_use(file_mount, tmp_path: Path) -> None:
    m = file_mount
    other_mp = tmp_path / "other-mnt"
    other_mp.mkdir()
    try:
        res = cli("mount", m.source, str(other_mp), "--cache-dir", m.cache_dir,
                  "--flush-window", "1")
        assert_one_line_error(res, m.cache_dir)
        assert not is_mounted(str(other_mp))
    finally:
        if is_mounted(str(other_mp)):
            subprocess.run(["fusermount3", "-uz", str(other_mp)], capture_output=True,
                           timeout=30, check=False)
    assert is_mounted(m.path)
    with open(m.p("still-works"), "w") as f:
        f.write("yes")
    m.sync()
    assert m.objects() == {"still-works": b"yes"}


# --- option values --------------------------------------------------------------------


@pytest.mark.parametrize(("extra", "needle"), [
    (["--flush-window", "abc"], "abc"),
    (["--cache-size", "lots"], "lots"),
    (["--file-mode", "999"], "999"),
    (["--dir-mode", "rwxr-xr-x"], "rwxr-xr-x"),
    (["-o", "no_such_option=1"], "no_such_option"),
    (["-o", "flush_window=soon"], "soon"),
    # NaN passes a plain ``value < minimum`` check; a NaN drain timeout makes every
    # later sync and umount fail
    (["--flush-window", "nan"], "nan"),
    (["--drain-timeout", "nan"], "nan"),
    # values argparse itself checks must fail the same way: one line, not a usage dump
    (["--max-uploads", "many"], "many"),
    (["--fsync", "sometimes"], "sometimes"),
    (["--metrics-addr", "nowhere"], "nowhere"),
    (["-o", "metrics_addr=127.0.0.1:http"], "127.0.0.1:http"),
], ids=["flush-window", "cache-size", "file-mode", "dir-mode", "unknown-o", "o-value",
        "flush-window-nan", "drain-timeout-nan", "max-uploads", "fsync", "metrics-addr",
        "o-metrics-addr"])
def test_invalid_option_values(extra: list[str], needle: str, bucket_dir: Path, mp: Path,
                               tmp_path: Path) -> None:
    start = time.monotonic()
    res = cli("mount", f"file://{bucket_dir}", str(mp), "--cache-dir",
              str(tmp_path / "cache"), *extra)
    assert time.monotonic() - start < 10
    assert_one_line_error(res, needle)
    assert not is_mounted(str(mp))


@pytest.mark.parametrize("source", ["ftp://x", "bucket-without-scheme", "s3://",
                                    "file://relative/path"])
def test_bad_source(source: str, mp: Path, tmp_path: Path) -> None:
    res = cli("mount", source, str(mp), "--cache-dir", str(tmp_path / "cache"))
    assert_one_line_error(res, source)
    assert not is_mounted(str(mp))


# --- control commands -----------------------------------------------------------------


@pytest.mark.parametrize("command", ["umount", "status", "sync"])
def test_control_commands_on_a_plain_directory(command: str, mp: Path) -> None:
    res = cli(command, str(mp))
    assert_one_line_error(res, str(mp))
    assert not is_mounted(str(mp))


@pytest.mark.parametrize("command", ["umount", "status", "sync"])
def test_control_commands_on_a_missing_directory(command: str, tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    res = cli(command, str(missing))
    assert_one_line_error(res, str(missing))


def test_status_json(mount) -> None:
    with open(mount.p("a.txt"), "wb") as f:
        f.write(b"x" * 1000)
    res = cli("status", "--json", mount.path)
    assert res.returncode == 0, res.stderr
    status = json.loads(res.stdout)
    for key in ("dirty_files", "dirty_bytes", "uploads_in_flight"):
        assert isinstance(status[key], int) and status[key] >= 0, (key, status[key])
    for key in ("errors", "skipped_keys"):
        assert isinstance(status[key], list), (key, status[key])
    assert status["errors"] == []
    mount.sync()
    status = json.loads(cli("status", "--json", mount.path).stdout)
    assert status["dirty_files"] == 0 and status["dirty_bytes"] == 0
    assert status["uploads_in_flight"] == 0
    # the human form works too
    res = cli("status", mount.path)
    assert res.returncode == 0 and "pending" in res.stdout, res.stderr


def test_help() -> None:
    res = cli("--help")
    assert res.returncode == 0, res.stderr
    for command in ("mount", "umount", "sync", "status"):
        assert command in res.stdout
    res = cli("mount", "--help")
    assert res.returncode == 0, res.stderr
    assert "--flush-window" in res.stdout
    assert "--cache-dir" in res.stdout


# --- issue 14: checks before the daemon, mount(8) options, read-only, status --------


@pytest.mark.parametrize("url", ["notaurl", "http://", "ftp://127.0.0.1:9000",
                                 "http://127.0.0.1:99999"])
def test_endpoint_url_is_checked_before_the_daemon_starts(url: str, mp: Path,
                                                           tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    res = cli("mount", "s3://some-bucket", str(mp), "--cache-dir", str(cache),
              "--endpoint-url", url)
    assert_one_line_error(res, "--endpoint-url", url)
    assert res.returncode == 2
    assert not cache.exists()  # no daemon was started (it would have logged there)
    assert not is_mounted(str(mp))


def test_non_empty_mount_point_is_refused_unless_asked(bucket_dir: Path, mp: Path,
                                                       tmp_path: Path) -> None:
    (mp / "already-here").write_text("local\n")
    base = ["mount", f"file://{bucket_dir}", str(mp), "--cache-dir", str(tmp_path / "cache")]
    res = cli(*base)
    assert_one_line_error(res, str(mp), "not empty", "--nonempty")
    assert not is_mounted(str(mp))
    for extra in (["--nonempty"], ["-o", "nonempty"]):
        res = cli(*base, *extra)
        assert res.returncode == 0, res.stderr
        assert is_mounted(str(mp)) and os.listdir(mp) == []  # hidden while mounted
        assert cli("umount", str(mp)).returncode == 0
        assert (mp / "already-here").read_text() == "local\n"


def test_the_daemon_keeps_nothing_of_the_caller(bucket_dir: Path, mp: Path,
                                                tmp_path: Path) -> None:
    """The mount command forks the daemon (no second Python start-up): the daemon
    must still hold none of the caller's descriptors (a pipe the caller passed would
    never see its end, and a shell capturing the output would wait forever), run in
    a session of its own, and write to its log."""
    r, w = os.pipe()
    try:
        res = subprocess.run([S3FUSE, "mount", f"file://{bucket_dir}", str(mp), "--cache-dir",
                              str(tmp_path / "cache")], capture_output=True, text=True,
                             timeout=FAST, pass_fds=(w,), stdin=subprocess.PIPE,
                             check=False)
        assert res.returncode == 0, res.stderr
        os.close(w)
        w = -1
        os.set_blocking(r, False)
        assert os.read(r, 1) == b"", "the daemon holds the caller's pipe"
    finally:
        os.close(r)
        if w >= 0:
            os.close(w)
    pid = json.loads(cli("status", str(mp), "--json").stdout)["pid"]
    assert os.getsid(pid) == pid
    assert os.getsid(pid) != os.getsid(0)
    fds = {os.readlink(f"/proc/{pid}/fd/{n}") for n in ("0", "1", "2")}
    assert fds == {os.devnull, str(tmp_path / "cache" / "s3fuse.log")}, fds
    assert cli("umount", str(mp)).returncode == 0


def test_fstab_atime_options_are_accepted(bucket_dir: Path, mp: Path, tmp_path: Path) -> None:
    res = cli("mount", f"file://{bucket_dir}", str(mp), "--cache-dir", str(tmp_path / "cache"),
              "-o", "noatime,nodiratime,relatime,atime,lazytime")
    assert res.returncode == 0, res.stderr
    assert is_mounted(str(mp))


@pytest.mark.parametrize("how", [["--read-only"], ["-o", "ro"]], ids=["flag", "o-ro"])
def test_read_only_mount(how: list[str], bucket_dir: Path, mp: Path, tmp_path: Path) -> None:
    (bucket_dir / "data.csv").write_bytes(b"a,b\n1,2\n")
    res = cli("mount", f"file://{bucket_dir}", str(mp), "--cache-dir", str(tmp_path / "cache"),
              *how)
    assert res.returncode == 0, res.stderr
    with open("/proc/self/mounts") as f:
        opts = next(line.split()[3] for line in f if line.split()[1] == str(mp))
    assert "ro" in opts.split(","), opts  # the kernel's mount is read-only
    assert (mp / "data.csv").read_bytes() == b"a,b\n1,2\n"
    for change in (lambda: open(mp / "new", "w"), lambda: open(mp / "data.csv", "a"),
                   lambda: os.mkdir(mp / "d"), lambda: os.unlink(mp / "data.csv"),
                   lambda: os.rename(mp / "data.csv", mp / "x.csv"),
                   lambda: os.chmod(mp / "data.csv", 0o600)):
        with pytest.raises(OSError) as exc:
            change()
        assert exc.value.errno == errno.EROFS
    st = json.loads(cli("status", "--json", str(mp)).stdout)
    assert st["read_only"] is True
    res = cli("sync", str(mp))
    assert res.returncode == 0 and "read-only; nothing to upload" in res.stdout, res.stderr
    res = cli("umount", str(mp))
    assert res.returncode == 0, res.stderr
    # nothing was written to the bucket (the file store keeps its own state apart)
    assert [p.name for p in bucket_dir.iterdir() if not p.name.startswith(".s3fuse")] == \
        ["data.csv"]


def test_status_reads_well_from_anywhere_in_the_mount(tmp_path: Path, file_source: str
                                                       ) -> None:
    require_fuse()
    m = make_mount(tmp_path, file_source, None)
    m.extra_args = ["--flush-window", "3600"]
    m.mount()
    try:
        status_from_inside(m)
    finally:
        m.cleanup()


def status_from_inside(m) -> None:
    with open(m.p("one"), "wb") as f:
        f.write(b"x" * 2048)
    os.makedirs(m.p("deep/er"))
    res = cli("status", m.p("deep/er"))  # a path inside the mount
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith(f"{m.path}: ")
    # in words (SPEC §8), never "1 files" or raw bytes; the directories' markers are
    # pending too
    assert "pending: 3 files (2.0 KiB); oldest change" in res.stdout, res.stdout
    m.sync()
    with open(m.p("one"), "wb") as f:
        f.write(b"y")
    res = cli("status", m.p("one"))
    assert "pending: 1 file (1 byte); oldest change" in res.stdout, res.stdout
    assert "1 files" not in res.stdout and "inf" not in res.stdout
    res = cli("status", "--json", m.p("deep/er"))
    assert json.loads(res.stdout)["mountpoint"] == m.path
    # piped into head: the reader goes away early, the command ends quietly
    for flags in ("", "--json"):
        res = subprocess.run(f"{S3FUSE} status {flags} {m.path} | head -c 10", shell=True,
                             capture_output=True, text=True, timeout=FAST)
        assert len(res.stdout) == 10 and res.stderr == "", res.stderr


def test_mount_helper_says_nothing_on_success(bucket_dir: Path, mp: Path,
                                              tmp_path: Path) -> None:
    res = cli("mount-helper", f"file://{bucket_dir}", str(mp), "-o",
              f"cache_dir={tmp_path / 'cache'},nodiratime")
    assert res.returncode == 0, res.stderr
    assert res.stdout == "" and res.stderr == ""
    assert is_mounted(str(mp))
    res = cli("mount-helper", f"file://{bucket_dir}", str(mp), "-o",
              f"cache_dir={tmp_path / 'cache'}")
    assert_one_line_error(res, str(mp))  # errors still show


@pytest.mark.parametrize("command", ["sync", "umount"])
def test_wait_timeout_is_checked(command: str, file_mount) -> None:
    for bad in ("nan", "soon", "-1"):
        res = cli(command, "--timeout", bad, file_mount.path)
        assert_one_line_error(res, "--timeout", bad)
    assert is_mounted(file_mount.path)
