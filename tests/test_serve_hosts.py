"""D3 of issue #37: the server answers only the host names it is reached by, so that a page
on another site whose name resolves to this machine (DNS rebinding) reads nothing."""

from __future__ import annotations

import socket

import pytest

from clipkit.serve.hosts import host_name, host_rule


@pytest.mark.parametrize(
    ("header", "name"),
    [
        ("127.0.0.1:8000", "127.0.0.1"),
        ("LOCALHOST", "localhost"),
        ("localhost.:8000", "localhost"),
        ("[::1]:8000", "::1"),
        ("[::1]", "::1"),
        ("::1", "::1"),
        ("Photos.Example.COM:443", "photos.example.com"),
    ],
)
def test_the_name_in_a_host_header(header, name):
    assert host_name(header) == name


def test_on_loopback_only_loopback_names_and_the_address_are_answered():
    rule = host_rule("127.0.0.1")
    for header in ("127.0.0.1:8000", "localhost:8000", "[::1]:8000", "LocalHost.", None):
        assert rule.allows(header), header
    for header in ("evil.example", "evil.example:8000", "127.0.0.1.evil.example",
                   "localhost.evil.example", "192.168.1.5:8000", "", "[::1"):  # fmt: skip
        assert not rule.allows(header), header


def test_allowed_hosts_are_added_and_a_named_address_is_answered():
    rule = host_rule("192.168.1.5", ["Photos.LAN"])
    assert rule.allows("192.168.1.5:8000") and rule.allows("photos.lan:8000")
    assert not rule.allows("10.0.0.7") and not rule.allows("other.lan")


def test_on_every_interface_addresses_and_the_machine_s_names_are_answered():
    rule = host_rule("0.0.0.0")
    assert rule.allows("192.168.1.5:8000") and rule.allows("[fe80::1]:8000")
    assert rule.allows(socket.gethostname()) and rule.allows("localhost")
    assert not rule.allows("evil.example")  # a rebinding needs a name, never an address
