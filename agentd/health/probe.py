"""The health probe: a tiny WASI program, assembled here byte by byte, that prints one line."""

from __future__ import annotations

PROBE_OUTPUT = b"agentd-wasm-probe-ok\n"
_I32 = 0x7F


def _uleb(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _vec(items: list[bytes]) -> bytes:
    return _uleb(len(items)) + b"".join(items)


def _name(text: str) -> bytes:
    data = text.encode()
    return _uleb(len(data)) + data


def _section(section_id: int, body: bytes) -> bytes:
    return bytes([section_id]) + _uleb(len(body)) + body


def _i32_const(value: int) -> bytes:
    # Only small non-negative constants are used: their signed LEB128 is one byte below 64.
    if not 0 <= value < 64:
        raise ValueError("the probe only needs constants 0..63")
    return bytes([0x41, value])


def probe_module() -> bytes:
    """A WASI command module: `_start` writes PROBE_OUTPUT to stdout with fd_write.

    Memory layout: an iovec {buf=16, len} at 0, the number of bytes written at 8, the text at 16.
    Built here rather than shipped as a file: no binary blob to trust, and a test compares it
    with what a real WebAssembly runtime does with it.
    """
    fd_write_type = b"\x60" + _vec([bytes([_I32])] * 4) + _vec([bytes([_I32])])
    start_type = b"\x60" + _vec([]) + _vec([])
    types = _section(1, _vec([fd_write_type, start_type]))
    imports = _section(2, _vec([_name("wasi_snapshot_preview1") + _name("fd_write") + b"\x00\x00"]))
    functions = _section(3, _vec([_uleb(1)]))
    memory = _section(5, _vec([b"\x00\x01"]))  # one 64 KiB page, no maximum
    exports = _section(
        7, _vec([_name("memory") + b"\x02\x00", _name("_start") + b"\x00" + _uleb(1)])
    )
    body = (
        b"\x00"  # no locals
        + _i32_const(1)  # fd: stdout
        + _i32_const(0)  # iovs
        + _i32_const(1)  # iovs_len
        + _i32_const(8)  # nwritten
        + b"\x10\x00"  # call fd_write
        + b"\x1a"  # drop its errno
        + b"\x0b"  # end
    )
    code = _section(10, _vec([_uleb(len(body)) + body]))
    iovec = (16).to_bytes(4, "little") + len(PROBE_OUTPUT).to_bytes(4, "little")
    segments = [
        b"\x00" + _i32_const(0) + b"\x0b" + _uleb(len(iovec)) + iovec,
        b"\x00" + _i32_const(16) + b"\x0b" + _uleb(len(PROBE_OUTPUT)) + PROBE_OUTPUT,
    ]
    data = _section(11, _vec(segments))
    header = b"\x00asm" + (1).to_bytes(4, "little")
    return header + types + imports + functions + memory + exports + code + data
