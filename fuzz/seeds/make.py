#!/usr/bin/env python3
"""Writes the seed inputs of the fuzz targets (fuzz/seeds/<target>/).
Run again after changing the bundle format: python3 fuzz/seeds/make.py"""
import os, struct

here = os.path.dirname(os.path.abspath(__file__))

def leb(n):
    out = bytearray()
    while True:
        b = n & 0x7f
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)

def sleb(n):
    out = bytearray()
    while True:
        b = n & 0x7f
        n >>= 7
        done = (n == 0 and not b & 0x40) or (n == -1 and b & 0x40)
        out.append(b | (0 if done else 0x80))
        if done:
            return bytes(out)

def name(s):
    return leb(len(s)) + s.encode()

def section(id, body):
    return bytes([id]) + leb(len(body)) + body

def vec(items):
    return leb(len(items)) + b"".join(items)

def module():
    """The smallest module the perch ABI accepts: exports memory, the ABI
    version, an event buffer at 1024 of 4096 bytes and a handler that
    returns 0."""
    types = vec([b"\x60\x00\x01\x7f", b"\x60\x03\x7f\x7f\x7e\x01\x7f"])
    funcs = vec([b"\x00", b"\x00", b"\x00", b"\x01"])
    memory = vec([b"\x00\x01"])
    exports = vec([
        name("memory") + b"\x02\x00",
        name("perch_abi_version") + b"\x00\x00",
        name("perch_event_buffer") + b"\x00\x01",
        name("perch_event_buffer_len") + b"\x00\x02",
        name("perch_on_event") + b"\x00\x03",
    ])
    def body(value):
        code = b"\x00\x41" + sleb(value) + b"\x0b"
        return leb(len(code)) + code
    code = vec([body(1), body(1024), body(4096), body(0)])
    return (b"\0asm\x01\0\0\0" + section(1, types) + section(3, funcs) + section(5, memory)
            + section(7, exports) + section(10, code))

MANIFEST = """name = "echo"
version = "1.0.0"

[triggers]
topics = ["tests/in/#"]

[limits]
fuel = 1000000

[publish]
allow = ["out/#"]

[config]
out = "out/v1"
"""

def bundle(manifest, wasm):
    return b"PRCH\x01" + struct.pack(">I", len(manifest)) + manifest.encode() + wasm

def write(target, name, data):
    with open(os.path.join(here, target, name), "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode())

wasm = module()
write("bundle", "valid", bundle(MANIFEST, wasm))
write("bundle", "with-options", b'{"force": true, "request_id": "r1"}\n' + bundle(MANIFEST, wasm))
write("bundle", "timer", bundle(MANIFEST.replace('topics = ["tests/in/#"]', "every_ms = 100"), wasm))
write("bundle", "cut", bundle(MANIFEST, wasm)[:40])

gateway = os.path.join(here, "..", "..", "gateway", "src", "default.toml")
with open(gateway) as f:
    write("config", "default.toml", f.read())
boards = os.path.join(here, "..", "..", "boards")
for board in sorted(os.listdir(boards)):
    path = os.path.join(boards, board, "perch.toml")
    if os.path.exists(path):
        with open(path) as f:
            write("config", board + ".toml", f.read())

for i, (outer, inner, topic) in enumerate([
    ("a/+/c", "a/b/c", "a/b/c"),
    ("sport/#", "sport/tennis/+", "sport/tennis/player1"),
    ("+/+", "/finance", "/finance"),
    ("#", "$SYS/#", "$SYS/broker"),
    ("a/#", "a", "a"),
]):
    write("topic", "seed%d" % i, "\0".join([outer, inner, topic]))

# host_abi: a payload length, then 21-byte calls (import, five i32s).
def call(i, *args):
    args = list(args) + [0] * (5 - len(args))
    return bytes([i]) + b"".join(struct.pack("<i", a) for a in args)
write("host_abi", "every-import", bytes([3]) + b"abc" + b"".join([
    call(0, 0, 3, 4, 1), call(1, 10, 6, 4, 1, 7), call(2, 10, 6, 0, 3),
    call(4, 4, 1, 6, 1), call(3, 4, 1, 64, 16), call(5, 4, 1), call(6, 4, 1, 64, 16),
    call(7, 2, 0, 3), call(8), call(9, 1),
]))
write("host_abi", "out-of-bounds", bytes([0]) + call(0, -16, 4096, 0, 1) + call(3, 0, 1, 65530, 100))
