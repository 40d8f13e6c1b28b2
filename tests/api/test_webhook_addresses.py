"""No server-side request forgery through webhooks: a URL whose host is or resolves to a loopback,
private, link-local (cloud metadata), shared, multicast or unspecified address is refused naming it,
unless T2I_WEBHOOK_ALLOW lists it; IPv4 mapped into IPv6 is judged as IPv4; only http(s) URLs with
a host and no credentials are taken; a delivery connects to the address it checked."""

from __future__ import annotations

import asyncio

import pytest

from t2i_core.api.webhooks.addresses import AddressRefused, check_webhook_url
from t2i_core.common.config import SettingsError, webhook_allow
from t2i_core.common.errors import InvalidRequest


def check(url: str, allow: str = ""):
    return asyncio.run(check_webhook_url(url, webhook_allow(allow)))


@pytest.mark.parametrize("url", [
    "http://127.0.0.1:8080/hook", "http://localhost/hook", "http://10.1.2.3/", "http://172.16.0.1/",
    "http://192.168.1.1/", "http://169.254.169.254/latest/meta-data/", "http://100.64.0.1/", "http://0.0.0.0/",
    "http://[::1]/", "http://[fd00:ec2::254]/", "http://[::ffff:127.0.0.1]/", "http://[fe80::1]/", "http://224.0.0.1/",
    "http://2130706433/",  # 127.0.0.1 as one number
])
def test_addresses_that_are_not_public_are_refused(url):
    with pytest.raises(AddressRefused) as err:
        check(url)
    assert err.value.status == 400 and err.value.param == "webhook" and "not public" in err.value.message


@pytest.mark.parametrize("url", ["ftp://example.com/", "http://user:pw@8.8.8.8/", "not a url", "http:///path",
                                 "http://8.8.8.8:99999/"])
def test_only_http_urls_with_a_host_and_no_credentials(url):
    with pytest.raises(InvalidRequest) as err:
        check(url)
    assert err.value.param == "webhook"


def test_the_allow_list_opens_exactly_what_it_names():
    target = check("http://127.0.0.1:9000/hook?x=1", allow="127.0.0.1")
    assert target.connect_url() == "http://127.0.0.1:9000/hook?x=1" and target.host_header() == "127.0.0.1:9000"
    assert check("http://10.2.3.4/", allow="10.0.0.0/8").address == "10.2.3.4"
    with pytest.raises(AddressRefused):
        check("http://127.0.0.2/", allow="127.0.0.1")
    with pytest.raises(SettingsError, match="T2I_WEBHOOK_ALLOW"):
        webhook_allow("10.0.0.0/33")


def test_a_public_address_is_taken_and_connected_to_as_checked():
    target = check("https://93.184.215.14/a/b")
    assert (target.scheme, target.address, target.port, target.target) == ("https", "93.184.215.14", 443, "/a/b")
    assert target.host_header() == "93.184.215.14"


@pytest.mark.parametrize("address", [
    "64:ff9b::a9fe:a9fe",      # NAT64 well-known prefix -> 169.254.169.254
    "64:ff9b::7f00:1",         # NAT64 -> 127.0.0.1
    "2002:7f00:1::1",          # 6to4 -> 127.0.0.1
    "2002:a9fe:a9fe::",        # 6to4 -> 169.254.169.254
    "::127.0.0.1",             # IPv4-compatible -> 127.0.0.1
    "::10.0.0.1",              # IPv4-compatible -> 10.0.0.1
    "::ffff:0:7f00:1",         # IPv4-translated -> 127.0.0.1
    "::ffff:0:a00:1",          # IPv4-translated -> 10.0.0.1
    "2001:0:4136:e378:8000:63bf:3fff:fdd2",  # Teredo
    "64:ff9b:1::a9fe:a9fe",    # NAT64 local-use prefix
])
def test_ipv6_addresses_that_embed_or_tunnel_to_ipv4_are_judged_by_it(address):
    with pytest.raises(AddressRefused):
        check(f"http://[{address}]/hook")


def test_ipv6_addresses_embedding_a_public_ipv4_pass_and_the_allow_list_opens_embedded_ones():
    for address in ("64:ff9b::808:808", "2002:808:808::1"):
        assert check(f"http://[{address}]/").address == address
    assert check("http://[64:ff9b::7f00:1]/", allow="127.0.0.1").address == "64:ff9b::7f00:1"
    assert check("http://[2001:0:4136:e378:8000:63bf:3fff:fdd2]/", allow="2001::/32").port == 80
