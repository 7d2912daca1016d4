#!/usr/bin/python3
"""Writes the seed corpus for the PROXY protocol fuzz targets.

    /usr/bin/python3 tests/fuzz/make_seeds.py

tests/fuzz/corpus/pp_parse/seed-*: one control byte (the split stride)
then a byte stream: valid v1/v2 headers (with payload after some) and one
or more inputs per error class.  tests/fuzz/corpus/pp_roundtrip/seed-*:
control byte (version, LOCAL, address kinds) then address bytes.  Files
libFuzzer adds later are named by their SHA-1; re-running this script only
rewrites the seed-* files.
"""

import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
SIG = b"\r\n\r\n\x00\r\nQUIT\n"


def crc32c(data):
    c = 0xFFFFFFFF
    for b in data:
        c ^= b
        for _ in range(8):
            c = (c >> 1) ^ (0x82F63B78 if c & 1 else 0)
    return c ^ 0xFFFFFFFF


def v2(ver_cmd, fam, body, declared=None):
    n = len(body) if declared is None else declared
    return SIG + bytes([ver_cmd, fam]) + struct.pack("!H", n) + body


A4 = bytes([192, 0, 2, 1, 198, 51, 100, 7]) + struct.pack("!HH", 56324, 443)
A6 = (bytes.fromhex("20010db8000000000000000000000001")
      + bytes.fromhex("20010db80000000000000000000000ff")
      + struct.pack("!HH", 1, 65535))


def tlv(t, v):
    return bytes([t]) + struct.pack("!H", len(v)) + v


def with_crc(prefix_tlvs=b"", suffix_tlvs=b"", addr=A4, fam=0x11):
    body = addr + prefix_tlvs + tlv(0x03, b"\0\0\0\0") + suffix_tlvs
    h = bytearray(v2(0x21, fam, body))
    off = 16 + len(addr) + len(prefix_tlvs) + 3
    h[off:off + 4] = struct.pack("!I", crc32c(bytes(h)))
    return bytes(h)


FFFF6 = ":".join(["ffff"] * 8)
PAYLOAD = b"\x03\x00\x04\xde\xad\xbe\xefGET / HTTP/1.1\r\n\r\n"

PARSE = {
    # valid v1
    "v1-spec-tcp4": b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n",
    "v1-tcp4-max": b"PROXY TCP4 255.255.255.255 255.255.255.255 65535 65535\r\n",
    "v1-tcp6-max": f"PROXY TCP6 {FFFF6} {FFFF6} 65535 65535\r\n".encode(),
    "v1-tcp6": b"PROXY TCP6 2001:db8::1 ::ffff:192.0.2.1 1 65535\r\n" + PAYLOAD,
    "v1-unknown": b"PROXY UNKNOWN\r\n",
    "v1-unknown-107": f"PROXY UNKNOWN {FFFF6} {FFFF6} 65535 65535\r\n".encode(),
    "v1-payload": b"PROXY TCP4 10.0.0.1 10.0.0.2 0 1\r\nPROXY TCP4 x\r\n",
    # invalid v1
    "v1-not-proxy": b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
    "v1-proxx": b"PROXX TCP4",
    "v1-too-long": b"PROXY UNKNOWN " + b"A" * 200,
    "v1-too-long-crlf": b"PROXY UNKNOWN " + b"A" * 92 + b"\r\n",
    "v1-leading-zero": b"PROXY TCP4 010.0.0.1 10.0.0.2 1 2\r\n",
    "v1-wrong-family": b"PROXY TCP6 1.2.3.4 5.6.7.8 1 2\r\n",
    "v1-port-65536": b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n",
    "v1-port-zero-lead": b"PROXY TCP4 1.2.3.4 5.6.7.8 1 080\r\n",
    "v1-lone-lf": b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n",
    "v1-lone-cr": b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\rX\r\n",
    "v1-double-space": b"PROXY TCP4  1.2.3.4 5.6.7.8 1 2\r\n",
    "v1-nul": b"PROXY TCP4\x00 1.2.3.4 5.6.7.8 1 2\r\n",
    "v1-udp4": b"PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n",
    "v1-extra-field": b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n",
    "v1-missing-field": b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n",
    # valid v2
    "v2-tcp4": v2(0x21, 0x11, A4) + PAYLOAD,
    "v2-tcp6": v2(0x21, 0x21, A6),
    "v2-unspec": v2(0x21, 0x00, b""),
    "v2-unix": v2(0x21, 0x31, b"/run/a".ljust(216, b"\0")),
    "v2-local": v2(0x20, 0x00, b""),
    "v2-local-len": v2(0x20, 0x11, A4 + b"junk"),
    "v2-tlvs": v2(0x21, 0x11, A4 + tlv(0x01, b"h2") + tlv(0x02, b"example.org")
                  + tlv(0x04, b"") + tlv(0x05, b"id-1") + tlv(0x20, b"\x01\0\0\0\0")
                  + tlv(0x30, b"ns")),
    "v2-crc": with_crc(tlv(0x01, b"h2")),
    "v2-crc6": with_crc(b"", tlv(0x02, b"a.example"), A6, 0x21),
    "v2-max": v2(0x21, 0x11, A4 + tlv(0x04, b"\0" * (1536 - 15))),
    # invalid v2
    "v2-bad-sig": SIG[:11] + b"\x0b\x21\x11\x00\x0c" + A4,
    "v2-version-1": v2(0x11, 0x11, A4),
    "v2-version-3": v2(0x31, 0x11, A4),
    "v2-command-2": v2(0x22, 0x11, A4),
    "v2-family-41": v2(0x21, 0x41, A4),
    "v2-family-udp4": v2(0x21, 0x12, A4),
    "v2-family-udp6": v2(0x21, 0x22, A6),
    "v2-len-0": v2(0x21, 0x11, b""),
    "v2-len-short": v2(0x21, 0x21, A6[:35]),
    "v2-too-long": v2(0x21, 0x11, A4 + b"x" * 40, declared=65535),
    "v2-too-long-1537": v2(0x21, 0x11, A4, declared=1537),
    "v2-tlv-past": v2(0x21, 0x11, A4 + b"\x01\x00\x05h2"),
    "v2-tlv-partial": v2(0x21, 0x11, A4 + b"\x04\x00"),
    "v2-crc-bad": with_crc(tlv(0x01, b"h2"))[:-1] + b"\x00",
    "v2-crc-len": v2(0x21, 0x11, A4 + tlv(0x03, b"\0\0")),
    "empty": b"",
    "tls-hello": bytes.fromhex("160301020001"),
}

# Control bytes: stride 1 (every prefix), and a few others.
STRIDES = [0, 6, 15, 255]


def rt(ctl, *parts):
    return bytes([ctl]) + b"".join(parts)


ADDR4 = struct.pack("!H", 40000) + bytes([203, 0, 113, 9])
ADDR6 = struct.pack("!H", 443) + bytes.fromhex("20010db8000000000000000000000042") + b"\x00\x00"
ROUNDTRIP = {
    # ctl bits: 0 version (1 = v2), 1 LOCAL, 2-3 src kind, 4-5 dst kind;
    # kinds: 0 none, 1 IPv4, 2 IPv6, 3 v4-mapped IPv6
    "v1-ipv4": rt(0b010100, ADDR4, ADDR4),
    "v2-ipv4": rt(0b010101, ADDR4, ADDR4),
    "v1-ipv6": rt(0b101000, ADDR6, ADDR6),
    "v2-ipv6": rt(0b101001, ADDR6, ADDR6),
    "v1-mapped": rt(0b111100, ADDR6, ADDR6),
    "v2-mapped-v4": rt(0b011101, ADDR6, ADDR4),
    "v2-local": rt(0b010111, ADDR4, ADDR4),
    "v1-local": rt(0b010110, ADDR4, ADDR4),
    "v1-unknown": rt(0b000000),
    "v2-unknown": rt(0b000001),
    "v2-mixed": rt(0b100101, ADDR4, ADDR6, b"trailing payload"),
    "v1-max": rt(0b101000, b"\xff" * 40),
}


def write(dirname, seeds):
    d = os.path.join(HERE, "corpus", dirname)
    os.makedirs(d, exist_ok=True)
    for name, data in seeds.items():
        with open(os.path.join(d, f"seed-{name}"), "wb") as f:
            f.write(data)
    return len(seeds)


def main():
    parse = {}
    for i, (name, data) in enumerate(sorted(PARSE.items())):
        parse[name] = bytes([STRIDES[i % len(STRIDES)]]) + data
    n = write("pp_parse", parse)
    m = write("pp_roundtrip", ROUNDTRIP)
    print(f"wrote {n} pp_parse and {m} pp_roundtrip seeds")


if __name__ == "__main__":
    main()
