"""Client IP: peer without a proxy, the N-th X-Forwarded-For entry from the right behind one."""

from __future__ import annotations

import pytest

from api.access.client_ip import client_ip, normalize_ip, rate_limit_subject


def test_peer_is_the_client_without_trusted_hops() -> None:
    assert client_ip("203.0.113.7", ["1.1.1.1"], 0) == "203.0.113.7"


def test_no_peer_and_no_hops_is_unknown() -> None:
    assert client_ip(None, [], 0) is None
    assert client_ip("", ["1.1.1.1"], 0) is None


def test_right_most_entry_with_one_hop() -> None:
    assert client_ip("10.0.0.1", ["198.51.100.1, 203.0.113.9"], 1) == "203.0.113.9"


def test_spoofed_left_most_entries_do_not_change_the_ip() -> None:
    honest = client_ip("10.0.0.1", ["203.0.113.9"], 1)
    spoofed = client_ip("10.0.0.1", ["1.2.3.4, 5.6.7.8, 203.0.113.9"], 1)
    assert honest == spoofed == "203.0.113.9"


def test_multiple_headers_are_joined_in_order() -> None:
    assert client_ip("10.0.0.1", ["1.2.3.4", "5.6.7.8, 203.0.113.9"], 1) == "203.0.113.9"
    assert client_ip("10.0.0.1", ["1.2.3.4", "5.6.7.8, 203.0.113.9"], 2) == "5.6.7.8"


def test_fewer_entries_than_hops_is_unknown() -> None:
    assert client_ip("10.0.0.1", [], 1) is None
    assert client_ip("10.0.0.1", ["203.0.113.9"], 2) is None


def test_invalid_entry_is_unknown_not_skipped() -> None:
    assert client_ip("10.0.0.1", ["203.0.113.9, unknown"], 1) is None
    assert client_ip("10.0.0.1", ["203.0.113.9,"], 1) is None


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("203.0.113.9:5123", "203.0.113.9"),
        ("[2001:DB8::1]:443", "2001:db8::1"),
        ("[2001:db8::1]", "2001:db8::1"),
        (" 2001:db8:0:0::1 ", "2001:db8::1"),
        ("::ffff:192.0.2.4", "192.0.2.4"),
        ('"192.0.2.4"', "192.0.2.4"),
        ("fe80::1%eth0", "fe80::1"),
        ("testclient", None),
        ("[2001:db8::1", None),
        ("999.1.1.1", None),
        ("", None),
    ],
)
def test_normalize(raw: str, expected: str | None) -> None:
    assert normalize_ip(raw) == expected


def test_ipv6_limits_count_per_slash_64() -> None:
    assert rate_limit_subject("2001:db8:1:2:aaaa::1") == rate_limit_subject("2001:db8:1:2:bbbb::9")
    assert rate_limit_subject("2001:db8:1:2::1") != rate_limit_subject("2001:db8:1:3::1")
    assert rate_limit_subject("192.0.2.4") == "192.0.2.4"
