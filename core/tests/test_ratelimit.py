"""Which client address rate limits count: forged forwarding headers must not help a client."""

from django.test import RequestFactory

from core.ratelimit import client_address


def test_without_trusted_proxies_a_forged_forwarded_header_is_ignored(settings):
    settings.NEEDLE_TRUSTED_PROXY_HOPS = 0
    request = RequestFactory().get("/", REMOTE_ADDR="203.0.113.9", HTTP_X_FORWARDED_FOR="1.2.3.4")
    assert client_address(request) == "203.0.113.9"


def test_behind_one_proxy_the_address_it_saw_counts_not_what_the_client_wrote(settings):
    settings.NEEDLE_TRUSTED_PROXY_HOPS = 1
    # The client wrote "1.2.3.4"; our proxy appended the address it really saw.
    request = RequestFactory().get("/", REMOTE_ADDR="10.0.0.2", HTTP_X_FORWARDED_FOR="1.2.3.4, 198.51.100.7")
    assert client_address(request) == "198.51.100.7"
    # A request that did not come through the proxy chain falls back to REMOTE_ADDR.
    assert client_address(RequestFactory().get("/", REMOTE_ADDR="10.0.0.3")) == "10.0.0.3"
