from __future__ import annotations

import dataclasses
import random
from ipaddress import IPv4Address, IPv6Address, ip_address

import pytest
from hypothesis import given
from hypothesis import strategies as st

from es_rerank_proxy.config import CanaryConfig, CanaryRule
from es_rerank_proxy.rollout.canary import (
    CanaryRules,
    ModeDecision,
    choose_mode,
    client_address,
    compile_canary,
    parse_address,
    sticky_bucket,
)

IPAddress = IPv4Address | IPv6Address

PROXIES = compile_canary(CanaryConfig(trusted_proxies=("10.0.0.0/8", "fd00::/8", "127.0.0.1/32")))

RULES = compile_canary(
    CanaryConfig(
        default="off",
        override_token="s3cret",
        rules=(
            CanaryRule(name="staff", cidr=("192.0.2.0/24", "2001:db8:1::/48"), mode="rerank"),
            CanaryRule(
                name="lab-shadow",
                cidr=("198.51.100.0/24",),
                mode="shadow",
                indices=("catalogue-*", "articles"),
            ),
            CanaryRule(name="lab-all", cidr=("198.51.100.0/25",), mode="rerank"),
            CanaryRule(name="mapped", cidr=("::ffff:203.0.113.0/120",), mode="shadow"),
            CanaryRule(name="v6-everything", cidr=("::/0",), mode="shadow", indices=("v6only",)),
        ),
    )
)


# --- client address -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("peer", "xff", "forwarded", "expected"),
    [
        # Untrusted peers: forwarding headers are the client's own words and ignored.
        ("203.0.113.5", None, None, "203.0.113.5"),
        ("203.0.113.5", "1.2.3.4", None, "203.0.113.5"),
        ("203.0.113.5", None, "for=1.2.3.4", "203.0.113.5"),
        ("203.0.113.5", "10.0.0.1", None, "203.0.113.5"),
        # Trusted peer with X-Forwarded-For.
        ("10.0.0.1", "198.51.100.7", None, "198.51.100.7"),
        ("10.0.0.1", "1.1.1.1, 198.51.100.7", None, "198.51.100.7"),  # left part is client-written
        ("10.0.0.1", "198.51.100.7, 10.0.0.2, 10.0.0.3", None, "198.51.100.7"),  # several trusted hops
        ("10.0.0.1", "6.6.6.6, 198.51.100.7, 10.1.1.1", None, "198.51.100.7"),
        ("10.0.0.1", "198.51.100.7, 10.0.0.2,10.0.0.3", None, "198.51.100.7"),  # headers joined by ", "
        ("10.0.0.1", "10.0.0.9, 10.0.0.2", None, "10.0.0.9"),  # all trusted: where it entered
        ("10.0.0.1", "unknown, 198.51.100.7, garbage", None, "198.51.100.7"),
        ("10.0.0.1", "garbage, , 300.1.1.1", None, "10.0.0.1"),  # nothing usable: the peer
        ("10.0.0.1", "198.51.100.7:4711", None, "198.51.100.7"),
        ("10.0.0.1", "2001:db8::1", None, "2001:db8::1"),
        ("10.0.0.1", "[2001:db8::1]:443", None, "2001:db8::1"),
        ("10.0.0.1", "::ffff:198.51.100.7", None, "198.51.100.7"),
        ("10.0.0.1", "198.51.100.7, ::ffff:10.0.0.5", None, "198.51.100.7"),  # mapped proxy is trusted
        ("127.0.0.1", "198.51.100.7", None, "198.51.100.7"),
        ("fd00::1", "198.51.100.7", None, "198.51.100.7"),
        ("::ffff:10.0.0.1", "198.51.100.7", None, "198.51.100.7"),  # mapped peer is trusted
        ("::ffff:203.0.113.5", "1.2.3.4", None, "203.0.113.5"),
        ("10.0.0.1", "198.51.100.7", "for=1.2.3.4", "198.51.100.7"),  # XFF wins over Forwarded
        ("10.0.0.1", "", "for=198.51.100.7", "198.51.100.7"),  # blank XFF counts as absent
        # Trusted peer with RFC 7239 Forwarded.
        ("10.0.0.1", None, "for=198.51.100.7", "198.51.100.7"),
        ("10.0.0.1", None, 'For="198.51.100.7:8080"', "198.51.100.7"),
        ("10.0.0.1", None, 'for="[2001:db8:cafe::17]"', "2001:db8:cafe::17"),
        ("10.0.0.1", None, 'for="[2001:db8:cafe::17]:4711"', "2001:db8:cafe::17"),
        ("10.0.0.1", None, "for=198.51.100.7;proto=https;by=10.0.0.1, for=10.0.0.2", "198.51.100.7"),
        ("10.0.0.1", None, "proto=https;for=198.51.100.7", "198.51.100.7"),
        ("10.0.0.1", None, "for=6.6.6.6, for=198.51.100.7;host=example.org", "198.51.100.7"),
        ("10.0.0.1", None, "for=198.51.100.7, for=unknown", "198.51.100.7"),
        ("10.0.0.1", None, "for=198.51.100.7, for=_hidden", "198.51.100.7"),
        ("10.0.0.1", None, "for=unknown", "10.0.0.1"),
        ("10.0.0.1", None, "proto=https", "10.0.0.1"),
        ("10.0.0.1", None, 'for="1.2.3.4, 5.6.7.8"', "10.0.0.1"),  # a comma inside quotes is one value
        ("10.0.0.1", None, 'for="[2001:db8::1', "10.0.0.1"),
        ("10.0.0.1", None, ";;,,==", "10.0.0.1"),
        # Peers.
        ("2001:db8::5", None, None, "2001:db8::5"),
        ("fe80::1%eth0", None, None, "fe80::1"),
        (None, "198.51.100.7", None, None),
        ("not an address", "198.51.100.7", None, None),
    ],
)
def test_client_address(
    peer: str | None, xff: str | None, forwarded: str | None, expected: str | None
) -> None:
    address = client_address(peer, xff, forwarded, PROXIES)
    assert address == (None if expected is None else ip_address(expected))


def test_ipv4_mapped_peer_comes_back_as_ipv4() -> None:
    assert type(client_address("::ffff:203.0.113.5", None, None, PROXIES)) is IPv4Address


@pytest.mark.parametrize(
    "text",
    ["", "   ", "unknown", "_hidden", "1.2.3.4:http", "[::1]x", "[::1]:", "1.2.3", "::ffff:1.2.3.4.5", '"'],
)
def test_parse_address_rejects_garbage(text: str) -> None:
    assert parse_address(text) is None


@given(st.text(max_size=60), st.text(max_size=60))
def test_client_address_never_raises_on_arbitrary_headers(xff: str, forwarded: str) -> None:
    address = client_address("10.0.0.1", xff, forwarded, PROXIES)
    assert address is not None
    assert client_address("10.0.0.1", None, forwarded, PROXIES) is not None


# --- rules ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "indices", "expected"),
    [
        ("192.0.2.10", ["catalogue"], ModeDecision("rerank", "rule:staff")),
        ("2001:db8:1::5", [], ModeDecision("rerank", "rule:staff")),
        ("::ffff:192.0.2.10", ["catalogue"], ModeDecision("rerank", "rule:staff")),
        ("2001:db8:2::5", ["catalogue"], ModeDecision("off", "default")),
        # First matching rule wins: lab-shadow before the overlapping lab-all.
        ("198.51.100.10", ["catalogue-2024"], ModeDecision("shadow", "rule:lab-shadow")),
        ("198.51.100.10", ["catalogue-2024", "articles"], ModeDecision("shadow", "rule:lab-shadow")),
        # Every requested index must match one of the rule's globs.
        ("198.51.100.10", ["catalogue-2024", "other"], ModeDecision("rerank", "rule:lab-all")),
        ("198.51.100.10", ["Catalogue-2024"], ModeDecision("rerank", "rule:lab-all")),
        # No index named means all indices: only a rule with "*" applies.
        ("198.51.100.10", [], ModeDecision("rerank", "rule:lab-all")),
        ("198.51.100.200", ["articles"], ModeDecision("shadow", "rule:lab-shadow")),
        ("198.51.100.200", ["other"], ModeDecision("off", "default")),
        ("198.51.100.200", [], ModeDecision("off", "default")),
        # An IPv4-mapped range in the config matches plain IPv4 clients.
        ("203.0.113.7", ["x"], ModeDecision("shadow", "rule:mapped")),
        ("203.0.114.7", ["x"], ModeDecision("off", "default")),
        # ::/0 covers every IPv6 client and, because it contains the mapped range, every IPv4 one too.
        ("2001:db8:9::1", ["v6only"], ModeDecision("shadow", "rule:v6-everything")),
        ("8.8.8.8", ["v6only"], ModeDecision("shadow", "rule:v6-everything")),
        (None, ["catalogue"], ModeDecision("off", "default")),
    ],
)
def test_rules_first_match_wins(address: str | None, indices: list[str], expected: ModeDecision) -> None:
    parsed = None if address is None else ip_address(address)
    assert choose_mode(RULES, parsed, indices, None, None) == expected


@pytest.mark.parametrize(
    ("config_token", "mode", "token", "address", "expected"),
    [
        ("s3cret", "shadow", "s3cret", "192.0.2.1", ModeDecision("shadow", "override")),
        ("s3cret", "off", "s3cret", "192.0.2.1", ModeDecision("off", "override")),
        ("s3cret", " Rerank ", "s3cret", None, ModeDecision("rerank", "override")),
        ("s3cret", "shadow", "wrong", "192.0.2.1", ModeDecision("rerank", "rule:staff")),
        ("s3cret", "shadow", "s3cre", "192.0.2.1", ModeDecision("rerank", "rule:staff")),
        ("s3cret", "shadow", "", "192.0.2.1", ModeDecision("rerank", "rule:staff")),
        ("s3cret", "shadow", None, "192.0.2.1", ModeDecision("rerank", "rule:staff")),
        ("s3cret", "shadow", "s3crét", "192.0.2.1", ModeDecision("rerank", "rule:staff")),
        ("s3cret", "bogus", "s3cret", "192.0.2.1", ModeDecision("rerank", "rule:staff")),
        ("s3cret", None, "s3cret", "192.0.2.1", ModeDecision("rerank", "rule:staff")),
        # No token configured: overrides are off, whatever the client sends.
        ("", "shadow", "", "192.0.2.1", ModeDecision("rerank", "rule:staff")),
        ("", "shadow", "anything", None, ModeDecision("off", "default")),
    ],
)
def test_override_needs_the_configured_token(
    config_token: str, mode: str | None, token: str | None, address: str | None, expected: ModeDecision
) -> None:
    rules = dataclasses.replace(RULES, override_token=config_token)
    parsed = None if address is None else ip_address(address)
    assert choose_mode(rules, parsed, ["catalogue"], mode, token) == expected


def test_compiled_rules_are_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        RULES.percent = 50  # type: ignore[misc]
    assert [rule.name for rule in RULES.rules] == [
        "staff",
        "lab-shadow",
        "lab-all",
        "mapped",
        "v6-everything",
    ]


# --- sticky percentage ----------------------------------------------------------------------------


def _random_addresses(count: int) -> list[IPAddress]:
    rng = random.Random(20250101)
    out: list[IPAddress] = []
    for i in range(count):
        out.append(IPv6Address(rng.getrandbits(128)) if i % 4 == 0 else IPv4Address(rng.getrandbits(32)))
    return out


ADDRESSES = _random_addresses(10_000)


@pytest.mark.parametrize("percent", [0.0, 10.0, 37.0, 100.0])
def test_percent_share_is_close_and_sticky(percent: float) -> None:
    rules = compile_canary(CanaryConfig(default="off", percent=percent))
    decisions = [choose_mode(rules, address, ["catalogue"], None, None) for address in ADDRESSES]
    share = 100 * sum(d.mode == "rerank" for d in decisions) / len(decisions)
    assert abs(share - percent) <= 2
    assert {d.source for d in decisions if d.mode == "rerank"} <= {"percent"}
    again = [choose_mode(rules, address, ["catalogue"], None, None) for address in ADDRESSES]
    assert again == decisions


def test_rules_take_precedence_over_percent() -> None:
    rules = dataclasses.replace(RULES, percent=100.0)
    assert (
        choose_mode(rules, ip_address("198.51.100.200"), ["articles"], None, None).source == "rule:lab-shadow"
    )
    assert choose_mode(rules, ip_address("8.8.4.4"), ["catalogue"], None, None) == ModeDecision(
        "rerank", "percent"
    )
    assert choose_mode(rules, None, ["catalogue"], None, None) == ModeDecision("off", "default")


def test_sticky_bucket_is_pinned_across_processes() -> None:
    # Fixed values: a change here reshuffles every client's canary assignment in production.
    assert sticky_bucket(IPv4Address("192.0.2.1"), "es-rerank-proxy") == pytest.approx(14.923136947436532)
    assert sticky_bucket(IPv6Address("2001:db8::1"), "es-rerank-proxy") == pytest.approx(46.89205157595906)


def test_salt_reshuffles_buckets() -> None:
    sample = ADDRESSES[:200]
    first = [sticky_bucket(a, "salt-a") < 50 for a in sample]
    second = [sticky_bucket(a, "salt-b") < 50 for a in sample]
    assert first != second


_ipv4 = st.integers(0, 2**32 - 1).map(IPv4Address)
_ipv6 = st.integers(0, 2**128 - 1).map(IPv6Address)


@given(st.one_of(_ipv4, _ipv6), st.text())
def test_sticky_bucket_range(address: IPAddress, salt: str) -> None:
    assert 0 <= sticky_bucket(address, salt) < 100


@given(_ipv4, st.text())
def test_mapped_address_shares_the_ipv4_bucket(address: IPv4Address, salt: str) -> None:
    mapped = IPv6Address(f"::ffff:{address}")
    assert sticky_bucket(mapped, salt) == sticky_bucket(address, salt)
    rules = compile_canary(CanaryConfig(default="off", percent=50, salt=salt))
    assert choose_mode(rules, mapped, [], None, None) == choose_mode(rules, address, [], None, None)


def test_compile_canary_keeps_settings() -> None:
    rules = compile_canary(CanaryConfig(default="shadow", percent=12.5, salt="x", override_token="t"))
    assert isinstance(rules, CanaryRules)
    assert (rules.default, rules.percent, rules.salt, rules.override_token) == ("shadow", 12.5, "x", "t")
    assert rules.rules == ()


# --- interleave ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("config", "address", "expected"),
    [
        (
            CanaryConfig(default="off", percent=100, percent_mode="interleave"),
            "8.8.8.8",
            ("interleave", "percent"),
        ),
        (CanaryConfig(default="interleave"), "8.8.8.8", ("interleave", "default")),
        (
            CanaryConfig(
                default="off", rules=(CanaryRule(name="lab", cidr=("10.0.0.0/8",), mode="interleave"),)
            ),
            "10.1.2.3",
            ("interleave", "rule:lab"),
        ),
        (CanaryConfig(default="off", percent=0, percent_mode="interleave"), "8.8.8.8", ("off", "default")),
    ],
)
def test_interleave_is_chosen_by_rule_percent_or_default(
    config: CanaryConfig, address: str, expected: tuple[str, str]
) -> None:
    decision = choose_mode(compile_canary(config), ip_address(address), ["catalogue"], None, None)
    assert (decision.mode, decision.source) == expected


def test_staff_can_force_interleave_with_the_token() -> None:
    decision = choose_mode(RULES, ip_address("8.8.8.8"), ["catalogue"], "Interleave", "s3cret")
    assert decision == ModeDecision("interleave", "override")
