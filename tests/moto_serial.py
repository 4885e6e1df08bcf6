"""moto's S3 server with its writes serialised, as S3 serialises them.

moto checks a conditional write's ``If-Match`` / ``If-None-Match`` against the current
object and stores the new one in two steps, so two concurrent conditional PUTs can
both succeed (S3 and Ceph RGW let one win and answer the other 412). The tests judge
s3fuse by whether it ever overwrites a version it did not see, so the server must not
do that by itself: every request that changes something (PUT, POST, DELETE) runs
alone; reads run in parallel as before.

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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("-H", "--host", default="127.0.0.1")
    parser.add_argument("-p", "--port", type=int, required=True)
    args = parser.parse_args()
    app = DomainDispatcherApplication(create_backend_app)
    run_simple(args.host, args.port, serialised(app), threaded=True,
               request_handler=MotoRequestHandler)


if __name__ == "__main__":
    main()
