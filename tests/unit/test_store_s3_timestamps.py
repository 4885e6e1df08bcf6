"""The S3 store reads response times without dateutil (``s3._parse_timestamp``): the
same instants as botocore's own parser, for the forms servers send and any other."""

from __future__ import annotations

import email.utils
from datetime import datetime, timedelta, timezone

from botocore.utils import parse_timestamp
from hypothesis import given
from hypothesis import strategies as st

from s3fuse.store.s3 import _mtime_ns, _new_session, _parse_timestamp

instants = st.datetimes(min_value=datetime(1971, 1, 1), max_value=datetime(2400, 1, 1),
                        timezones=st.just(timezone.utc))


def same_instant(value: str) -> None:
    ours, theirs = _parse_timestamp(value), parse_timestamp(value)
    assert ours.tzinfo is not None
    if theirs.tzinfo is not None:  # (botocore leaves a time without a zone naive: UTC)
        assert ours == theirs, value
    assert _mtime_ns(ours) == _mtime_ns(theirs), value


@given(instants, st.sampled_from(["%Y-%m-%dT%H:%M:%S.%fZ", "%Y-%m-%dT%H:%M:%SZ",
                                  "%Y-%m-%dT%H:%M:%S.000Z", "%Y-%m-%dT%H:%M:%S+00:00",
                                  "%Y-%m-%dT%H:%M:%S"]))
def test_iso_8601_as_in_listings(when, fmt):
    same_instant(when.strftime(fmt))


@given(instants, st.integers(-12 * 60, 14 * 60))
def test_rfc_1123_as_in_headers(when, offset_min):
    same_instant(email.utils.format_datetime(when, usegmt=True))
    shifted = when.astimezone(timezone(timedelta(minutes=offset_min)))
    same_instant(email.utils.format_datetime(shifted))


def test_other_forms_go_to_botocore():
    for value in ("1764688275", "1764688275.5", "20261202T151115Z"):
        same_instant(value)


def test_the_store_session_uses_it():
    factory = _new_session()._session.get_component("response_parser_factory")
    assert factory._defaults.get("timestamp_parser") is _parse_timestamp
