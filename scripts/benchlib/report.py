"""The text report, ``bench.py compare``, and the versions of what ran."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

from benchlib.common import (
    REPO,
    S3_SYSTEMS,
    TABLE_SYSTEMS,
    VENV_BIN,
    fmt_counts,
    fmt_ratio,
    fmt_s,
    table,
)
from benchlib.inputs import Inputs, Sizes
from benchlib.runner import Runner, StepResult
from benchlib.systems import Ctx

# ======================================================================================
# Report
# ======================================================================================

def render(runner: Runner, baselines: dict, scale: dict | None, ctx: Ctx,
           sizes: Sizes, inp: Inputs) -> str:
    systems = [n for n in TABLE_SYSTEMS if n in runner.systems]
    peers = [n for n in ("s3fs", "rclone", "ref", "local") if n in systems]
    wkeys = list(runner.results)
    lines: list[str] = []
    have_s3fuse = "s3fuse" in systems

    def cell(r: StepResult | None, value: float | None) -> str:
        if r is None:
            return "-"
        if r.status == "ok":
            return fmt_s(value)
        return {"failed": "FAIL", "timeout": "TIMEOUT", "skipped": "skip"}[r.status]

    def ok_value(r: StepResult | None, caught: bool = False) -> float | None:
        if r is None or r.status != "ok":
            return None
        return r.caught_up if caught else r.seconds

    if wkeys:
        # 1. seconds until the command returned
        headers = ["workload (seconds, lower is better)"] + systems
        if have_s3fuse:
            headers += [f"s3fuse/{p}" for p in peers]
        rows = []
        for k in wkeys:
            row = runner.results[k]
            cells = [runner.titles[k]]
            cells += [cell(row.get(n), ok_value(row.get(n))) for n in systems]
            if have_s3fuse:
                a = ok_value(row.get("s3fuse"))
                cells += [fmt_ratio(a, ok_value(row.get(p))) for p in peers]
            rows.append(cells)
        lines.append("Seconds until the command returned (what the user waits for). "
                     f"s3fuse --flush-window {ctx.args.flush_window}"
                     f"{' ' + ctx.args.s3fuse_options if ctx.args.s3fuse_options else ''}"
                     "; rclone --vfs-cache-mode "
                     f"writes --vfs-write-back {ctx.args.flush_window}s; s3fs -o "
                     f"{ctx.args.s3fs_options or '(defaults)'}.")
        lines.append("Ratios: s3fuse time / peer time (below 1: s3fuse is faster).")
        lines.append(table(headers, rows, sep_after=len(systems) if have_s3fuse else None))

        # 2. until the bucket has caught up
        s3s = [n for n in S3_SYSTEMS if n in systems]
        if s3s:
            lines.append("")
            lines.append("Seconds until the bucket has caught up: the command's time plus "
                         "s3fuse: `s3fuse sync`; rclone: write-back queue forced through rc and "
                         "drained; s3fs: nothing (it uploads before close() returns).")
            headers = ["workload (seconds until in the bucket)"] + s3s
            cmp_peers = [p for p in ("s3fs", "rclone") if p in s3s]
            if have_s3fuse:
                headers += [f"s3fuse/{p}" for p in cmp_peers]
            rows = []
            for k in wkeys:
                row = runner.results[k]
                cells = [runner.titles[k]]
                cells += [cell(row.get(n), ok_value(row.get(n), True)) for n in s3s]
                if have_s3fuse:
                    a = ok_value(row.get("s3fuse"), True)
                    cells += [fmt_ratio(a, ok_value(row.get(p), True)) for p in cmp_peers]
                rows.append(cells)
            lines.append(table(headers, rows, sep_after=len(s3s) if have_s3fuse else None))

            # 3. requests
            lines.append("")
            lines.append("S3 requests per workload, from the start of the command until caught "
                         "up (counting proxy): total: G=GET L=LIST H=HEAD P=PUT (and parts) "
                         "C=COPY O=POST D=DELETE")
            headers = ["workload (S3 requests)"] + s3s
            rows = []
            for k in wkeys:
                row = runner.results[k]
                cells = [runner.titles[k]]
                for n in s3s:
                    r = row.get(n)
                    cells.append(fmt_counts(r.requests) if r and r.requests is not None else
                                 ("-" if r is None or r.status == "ok" else r.status))
                rows.append(cells)
            lines.append(table(headers, rows))

    # baselines
    b = baselines
    bl = []
    if "ref_discard_write_s" in b:
        bl.append(f"write {sizes.seq_mib} MiB + fsync to reffs --discard: "
                  f"{fmt_s(b['ref_discard_write_s'])} s")
    if "boto3_put_s" in b:
        bl.append(f"boto3 upload_file {sizes.seq_mib} MiB: {fmt_s(b['boto3_put_s'])} s "
                  f"[{fmt_counts(b.get('boto3_put_requests'))}]; download_file: "
                  f"{fmt_s(b['boto3_get_s'])} s [{fmt_counts(b.get('boto3_get_requests'))}]")
        sw = runner.results.get("seqwrite", {}).get("s3fuse")
        cr = runner.results.get("coldread", {}).get("s3fuse")
        if cr is not None and cr.status == "ok":
            bl.append(f"s3fuse cold read / boto3 download: "
                      f"{fmt_ratio(cr.seconds, b['boto3_get_s'])}")
        if sw is not None and sw.status == "ok":
            bl.append(f"s3fuse write+sync (until in bucket) / boto3 upload: "
                      f"{fmt_ratio(sw.caught_up, b['boto3_put_s'])}")
    for k in ("ref_discard_write_error", "boto3_error", "boto3_ckpt_error",
              "boto3_parread_error"):
        if k in b:
            bl.append(f"{k}: {b[k]}")
    if bl:
        lines.append("")
        lines.append("Baselines: " + "; ".join(bl))
    lines.extend(_against_boto3(runner, b, sizes))

    # scale
    if scale:
        lines.append("")
        lines.append(f"Scale: {scale['objects']:,} objects in {scale['directories']:,} "
                     f"directories (one with {scale['big_dir_entries']:,} entries, "
                     f"{scale['root_files']} files at the root), written by boto3 in "
                     f"{scale['seed_seconds']:.0f} s; every mount starts with an empty cache.")
        ss = [n for n in S3_SYSTEMS if n in scale["systems"]]
        metrics = [
            ("mount → first ls of the root (s)", "mount_to_first_ls_s", True),
            ("  of which the mount command (s)", "mount_s", True),
            ("  requests", "mount_to_first_ls_requests", False),
            (f"ls -l of the {scale['big_dir_entries']:,}-entry dir, cold (s)",
             "ls_l_big_cold_s", True),
            ("  requests", "ls_l_big_cold_requests", False),
            ("find over everything (s)", "find_s", True),
            ("  requests", "find_requests", False),
        ]
        rows = []
        for title, key, is_time in metrics:
            cells = [title]
            for n in ss:
                r = scale["systems"][n]
                v = r.get(key)
                if v is None:
                    cells.append(r.get("status", "-").upper() if is_time and
                                 r.get("status") != "ok" else "-")
                else:
                    cells.append(fmt_s(v) if is_time else fmt_counts(v))
            rows.append(cells)
        rows.append(["daemon peak RSS (MiB, VmHWM)"] + [
            f"{scale['systems'][n]['peak_rss_mib']:.0f}"
            if scale["systems"][n].get("peak_rss_mib") else "-" for n in ss])
        lines.append(table(["scale"] + ss, rows))
        for n in ss:
            if scale["systems"][n].get("error"):
                lines.append(f"  {n}: {scale['systems'][n]['error']}")

    # failures
    fails = []
    for k in wkeys:
        for n, r in runner.results[k].items():
            if r.status != "ok":
                fails.append(f"  {k} on {n}: {r.status}: {r.error}")
    if fails:
        lines.append("")
        lines.append("Not timed (failed, timed out or skipped):")
        lines.extend(fails)

    # profiles
    if runner.profiles or (scale and any("profile_find" in v for v in
                                         scale["systems"].values())):
        lines.append("")
        lines.append("py-spy on the s3fuse daemon (percent of samples; profiled runs are "
                     "slower, so their times above are not comparable):")
        profs = dict(runner.profiles)
        if scale:
            for v in scale["systems"].values():
                for k in ("profile_ls_l", "profile_find"):
                    if k in v:
                        profs["scale " + k[8:]] = v[k]
        for k, p in profs.items():
            lines.append(f"  {k}: {p['samples']} samples; top own: " + "; ".join(
                f"{n} {v}%" for n, v in p["self"][:6]))
            lines.append("      s3fuse inclusive: " + "; ".join(
                f"{n} {v}%" for n, v in p["inclusive_s3fuse"][:8]))
    lines.append("")
    lines.append("Notes: moto reads the whole object for every GET, ranged or not, so many "
                 "small ranged GETs of a big object cost far more on moto than on S3 (see "
                 "the GET counts of the cold read). s3fuse's LIST counts include its "
                 "directory poller (every --poll-interval, default 30 s, each directory "
                 "used within two intervals), whichever step is running. moto closes the "
                 "connection after each response (HTTP/1.0), for every client alike.")
    inputs = (f"Inputs: tree {sizes.tree_files} files; sdist {inp.sdist_name}; "
              if wkeys else "")
    lines.append(f"{inputs}machine {os.cpu_count()} cores, load average "
                 f"{os.getloadavg()[0]:.1f} at the end (shared: compare ratios).")
    return "\n".join(lines)


def _against_boto3(runner: Runner, b: dict, sizes: Sizes) -> list[str]:
    """Each S3 system's ML figures divided by plain boto3's, same bytes, same server."""
    rows = []
    for key, base, what, caught in (
            ("ml_ckpt", "boto3_ckpt_put_s", "checkpoint until it returned / upload_file",
             False),
            ("ml_ckpt", "boto3_ckpt_put_s", "checkpoint until in the bucket / upload_file",
             True),
            ("ml_parread", "boto3_parread_s",
             f"dataset read cold / boto3 get_object, {sizes.readers} threads", False)):
        if base not in b or key not in runner.results:
            continue
        row = runner.results[key]
        names = [n for n in S3_SYSTEMS if n in row]
        cells = [f"{n} {fmt_ratio(r.caught_up if caught else r.seconds, b[base])}"
                 if (r := row[n]).status == "ok" else f"{n} {r.status}" for n in names]
        rows.append(f"  {what} ({fmt_s(b[base])} s, "
                    f"[{fmt_counts(b.get(base.replace('_s', '_requests')))}]): "
                    + ", ".join(cells))
    return ["", "Against plain boto3 (system time / boto3 time):", *rows] if rows else []


def compare_main(argv: list[str]) -> int:
    """``bench.py compare OLD.json NEW.json``: seconds of each workload and system in
    two runs, and NEW/OLD (below 1: NEW is faster)."""
    if len(argv) != 2:
        print("usage: scripts/bench compare OLD.json NEW.json", file=sys.stderr)
        return 2
    old, new = (json.loads(Path(x).read_text()) for x in argv)

    def secs(run: dict) -> dict[tuple[str, str], tuple[float | None, str]]:
        out = {}
        for w in run.get("workloads", []):
            for n, r in w["results"].items():
                v = r["seconds"] if r["status"] == "ok" else None
                out[(w["key"], n)] = (v, r["status"])
                v2 = r.get("caught_up_seconds") if r["status"] == "ok" else None
                if r.get("catch_up_seconds") is not None:
                    out[(w["key"] + " (caught up)", n)] = (v2, r["status"])
        for n, r in ((run.get("scale") or {}).get("systems") or {}).items():
            for k in ("mount_to_first_ls_s", "ls_l_big_cold_s", "find_s"):
                out[("scale " + k, n)] = (r.get(k), r.get("status", "?"))
        return out
    a, b = secs(old), secs(new)
    if old.get("sizes") != new.get("sizes"):
        print("warning: the two runs used different sizes (--quick, --seq-mib, "
              "--scale-objects...): compare with care", file=sys.stderr)
    rows = []
    for key in [k for k in b if k in a]:
        (va, sa), (vb, sb) = a[key], b[key]
        rows.append([key[0], key[1], fmt_s(va) if va is not None else sa,
                     fmt_s(vb) if vb is not None else sb, fmt_ratio(vb, va)])
    print(f"OLD {argv[0]} ({old.get('started', '?')})\nNEW {argv[1]} "
          f"({new.get('started', '?')})")
    print(table(["workload", "system", "OLD s", "NEW s", "NEW/OLD"], rows))
    return 0


def versions() -> dict:
    def first(cmd: list[str]) -> str:
        try:
            res = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
            return (res.stdout or res.stderr).strip().splitlines()[0]
        except (OSError, subprocess.SubprocessError, IndexError):
            return "?"
    rclone = str(VENV_BIN / "rclone") if (VENV_BIN / "rclone").exists() else "rclone"
    out = {"s3fs": first(["s3fs", "--version"]), "rclone": first([rclone, "version"]),
           "python": platform.python_version(), "kernel": platform.release()}
    with contextlib.suppress(Exception):
        import moto
        out["moto"] = moto.__version__
    with contextlib.suppress(Exception):
        out["s3fuse_commit"] = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
            text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "s3fuse"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        out["s3fuse_tree_dirty"] = bool(dirty)
    return out

