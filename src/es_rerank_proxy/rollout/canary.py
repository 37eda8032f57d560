"""Which mode a request gets: staff override, first matching CIDR rule, sticky percentage, or default.

The client is the TCP peer unless the peer is a trusted proxy; then it is the right-most address in
`X-Forwarded-For` (or RFC 7239 `Forwarded: for=`) that is not itself a trusted proxy. IPv4-mapped IPv6
addresses count as their IPv4 address everywhere.
"""

from __future__ import annotations

import fnmatch
import functools
import hashlib
import hmac
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeAlias

from ..config import CanaryConfig, Mode

IPAddress: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork: TypeAlias = ipaddress.IPv4Network | ipaddress.IPv6Network

MODES: tuple[Mode, ...] = ("off", "rerank", "shadow", "interleave")
# ::ffff:0:0/96 holds the IPv4-mapped addresses, which are matched as plain IPv4.
_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")
_ALL_IPV4 = ipaddress.IPv4Network("0.0.0.0/0")


@dataclass(frozen=True, slots=True)
class CompiledRule:
    """A canary rule with its address ranges parsed."""

    name: str
    networks: tuple[IPNetwork, ...]
    mode: Mode
    indices: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class CanaryRules:
    """The canary section, parsed once at start-up."""

    default: Mode
    percent: float
    percent_mode: Mode
    salt: str
    trusted_proxies: tuple[IPNetwork, ...]
    override_token: str
    rules: tuple[CompiledRule, ...]


@dataclass(frozen=True, slots=True)
class ModeDecision:
    """The mode for a request and why: "override", "rule:<name>", "percent" or "default"."""

    mode: Mode
    source: str

    def __init__(self, mode: Mode, source: str) -> None:
        # Written out: mypyc compiles this one, not the one @dataclass generates (tests/test_inits.py).
        object.__setattr__(self, "mode", mode)
        object.__setattr__(self, "source", source)


def compile_canary(cfg: CanaryConfig) -> CanaryRules:
    """Parse every address range once; `load_config` has already checked they are valid."""
    return CanaryRules(
        default=cfg.default,
        percent=cfg.percent,
        percent_mode=cfg.percent_mode,
        salt=cfg.salt,
        trusted_proxies=_networks(cfg.trusted_proxies),
        override_token=cfg.override_token,
        rules=tuple(
            CompiledRule(name=rule.name, networks=_networks(rule.cidr), mode=rule.mode, indices=rule.indices)
            for rule in cfg.rules
        ),
    )


def client_address(
    peer: str | None, forwarded_for: str | None, forwarded: str | None, rules: CanaryRules
) -> IPAddress | None:
    """The client's address: the peer, or when the peer is a trusted proxy, what the proxies forwarded."""
    peer_address = parse_address(peer) if peer is not None else None
    if peer_address is None or not _in_any(peer_address, rules.trusted_proxies):
        # An untrusted peer could have written any forwarding header it liked.
        return peer_address
    if forwarded_for is not None and forwarded_for.strip():
        entries = forwarded_for.split(",")
    elif forwarded is not None and forwarded.strip():
        entries = _forwarded_for_values(forwarded)
    else:
        return peer_address
    nearest_trusted = peer_address
    for entry in reversed(entries):
        address = parse_address(entry)
        if address is None:
            # `unknown`, an obfuscated id or garbage: whatever stands left of it was written by someone
            # no trusted proxy vouches for, so the walk ends at the last trusted hop.
            return nearest_trusted
        if not _in_any(address, rules.trusted_proxies):
            return address
        nearest_trusted = address
    # Every hop is a trusted proxy: the left-most one is where the request entered.
    return nearest_trusted


def choose_mode(
    rules: CanaryRules,
    address: IPAddress | None,
    indices: Sequence[str],
    override_mode: str | None,
    override_token: str | None,
) -> ModeDecision:
    """Token override, else the first matching rule, else the sticky percentage; else default."""
    mode = _as_mode(override_mode)
    if mode is not None and _token_ok(rules.override_token, override_token):
        return ModeDecision(mode=mode, source="override")
    if address is None:
        return ModeDecision(mode=rules.default, source="default")
    address = _normalise(address)
    for rule in rules.rules:
        if _in_any(address, rule.networks) and _indices_match(indices, rule.indices):
            return ModeDecision(mode=rule.mode, source=f"rule:{rule.name}")
    if rules.percent > 0 and sticky_bucket(address, rules.salt) < rules.percent:
        return ModeDecision(mode=rules.percent_mode, source="percent")
    return ModeDecision(mode=rules.default, source="default")


def sticky_bucket(address: IPAddress, salt: str) -> float:
    """A number in [0, 100) fixed by address and salt, the same in every process and replica."""
    address = _normalise(address)
    salt_bytes = salt.encode("utf-8")
    # Length-prefix the salt so that no (salt, address) pair can collide with another by concatenation.
    message = len(salt_bytes).to_bytes(4, "big") + salt_bytes + bytes([address.version]) + address.packed
    value = int.from_bytes(hashlib.blake2b(message, digest_size=8).digest(), "big") >> 11
    # 53 bits are exact in a float and (2**53 - 1) * 100 / 2**53 rounds below 100, so 100 is never reached.
    return value * 100 / 2**53


@functools.lru_cache(maxsize=4096)  # the same few peers and proxies send most requests
def parse_address(text: str) -> IPAddress | None:
    """One address from a peer or header entry: bare, quoted, `[v6]`, with or without a port; else None."""
    text = text.strip().strip('"').strip()
    if text.startswith("["):
        end = text.find("]")
        if end < 0 or (text[end + 1 :] and not _is_port(text[end + 1 :])):
            return None
        text = text[1:end]
    elif text.count(":") == 1:
        # IPv4 with a port (some proxies append one); a bare IPv6 address has at least two colons.
        host, _, port = text.partition(":")
        if not port.isdigit():
            return None
        text = host
    try:
        return _normalise(ipaddress.ip_address(text))
    except ValueError:
        return None


def _is_port(text: str) -> bool:
    return text.startswith(":") and text[1:].isdigit()


def _normalise(address: IPAddress) -> IPAddress:
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return address.ipv4_mapped
        if address.scope_id is not None:
            # A zone ("%eth0") names the interface, not a different client.
            return ipaddress.IPv6Address(int(address))
    return address


def _networks(ranges: Sequence[str]) -> tuple[IPNetwork, ...]:
    out: list[IPNetwork] = []
    for text in ranges:
        network = ipaddress.ip_network(text, strict=False)
        if isinstance(network, ipaddress.IPv6Network) and network.subnet_of(_MAPPED):
            # Mapped addresses are compared as IPv4, so a mapped range becomes the IPv4 range it covers.
            first = int(network.network_address) & 0xFFFFFFFF
            network4 = ipaddress.IPv4Network((first, network.prefixlen - 96))
            out.append(network4)
            continue
        out.append(network)
        if isinstance(network, ipaddress.IPv6Network) and _MAPPED.subnet_of(network):
            out.append(_ALL_IPV4)
    return tuple(out)


def _in_any(address: IPAddress, networks: Sequence[IPNetwork]) -> bool:
    # Membership across IP versions is simply False, so mixed lists need no special case.
    return any(address in network for network in networks)


def _indices_match(requested: Sequence[str], patterns: Sequence[str]) -> bool:
    if not requested:
        return "*" in patterns
    return all(any(fnmatch.fnmatchcase(index, pattern) for pattern in patterns) for index in requested)


def _as_mode(value: str | None) -> Mode | None:
    if value is None:
        return None
    wanted = value.strip().lower()
    for mode in MODES:
        if mode == wanted:
            return mode
    return None


def _token_ok(expected: str, given: str | None) -> bool:
    if not expected or given is None:
        return False
    # Bytes, because compare_digest refuses non-ASCII str and a header may carry anything.
    return hmac.compare_digest(expected.encode("utf-8"), given.strip().encode("utf-8"))


def _forwarded_for_values(header: str) -> list[str]:
    """The `for=` value of each RFC 7239 element, left to right; elements without one are skipped."""
    values: list[str] = []
    for element in _split_unquoted(header, ","):
        for pair in _split_unquoted(element, ";"):
            name, sep, value = pair.partition("=")
            if sep and name.strip().lower() == "for":
                values.append(_unquote(value.strip()))
                break
    return values


def _split_unquoted(text: str, separator: str) -> list[str]:
    parts: list[str] = []
    current: list[str] = []
    quoted = escaped = False
    for char in text:
        if escaped:
            escaped = False
        elif quoted and char == "\\":
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif char == separator and not quoted:
            parts.append("".join(current))
            current = []
            continue
        current.append(char)
    parts.append("".join(current))
    return parts


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] == '"':
        inner = value[1:-1]
        out: list[str] = []
        escaped = False
        for char in inner:
            if char == "\\" and not escaped:
                escaped = True
                continue
            out.append(char)
            escaped = False
        return "".join(out)
    return value
