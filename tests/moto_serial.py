"""moto's S3 server with its writes serialised, as S3 serialises them.

moto checks a conditional write's ``If-Match`` / ``If-None-Match`` against the current
object and stores the new one in two steps, so two concurrent conditional PUTs can
both succeed (S3 and Ceph RGW let one win and answer the other 412). The tests judge
s3fuse by whether it ever overwrites a version it did not see, so the server must not
do that by itself: every request that changes something (PUT, POST, DELETE) runs
alone; reads run in parallel as before.

It also lists common prefixes as S3 does on a versioned bucket: moto 5 names a
prefix whose every key is deleted (a delete marker is the latest version) in a
delimited listing; S3 and Ceph RGW do not, so a removed directory would seem to come
back (``_no_deleted_prefixes``).

Run as ``python moto_serial.py -H HOST -p PORT`` (what ``servers.MotoServer`` does).
"""

from __future__ import annotations

import argparse
import threading

from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)
from moto.s3.models import FakeDeleteMarker, S3Backend
from werkzeug.serving import run_simple

_WRITES = {"PUT", "POST", "DELETE"}


def serialised(app):
    lock = threading.Lock()

    def wrapper(environ, start_response):
        if environ.get("REQUEST_METHOD") not in _WRITES:
            return app(environ, start_response)
        with lock:
            result = app(environ, start_response)
            try:
                return [b"".join(result)]  # the whole answer is made under the lock
            finally:
                close = getattr(result, "close", None)
                if close is not None:
                    close()

    return wrapper


def _no_deleted_prefixes() -> None:
    """Drop the common prefixes under which only deleted keys remain (see above)."""
    original = S3Backend.list_objects

    def list_objects(self, bucket, prefix, delimiter, marker, max_keys):
        keys, folders, truncated, next_marker = original(self, bucket, prefix, delimiter,
                                                         marker, max_keys)
        if delimiter and folders:
            start = len(prefix or "")
            live = {name[:start] + name[start:].split(delimiter)[0] + delimiter
                    for name, key in bucket.keys.items()
                    if name.startswith(prefix or "") and delimiter in name[start:]
                    and not isinstance(key, FakeDeleteMarker)}
            folders = [f for f in folders if f in live]
        return keys, folders, truncated, next_marker

    S3Backend.list_objects = list_objects


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("-H", "--host", default="127.0.0.1")
    parser.add_argument("-p", "--port", type=int, required=True)
    args = parser.parse_args()
    _no_deleted_prefixes()
    app = DomainDispatcherApplication(create_backend_app)
    run_simple(args.host, args.port, serialised(app), threaded=True,
               request_handler=MotoRequestHandler)


if __name__ == "__main__":
    main()
