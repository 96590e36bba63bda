"""IEEE 488.2 definite-length arbitrary blocks: the binary payloads of SCPI messages.

A block is ``#<n><len><data>``: ``#``, one digit ``n`` (1-9) giving how many digits follow, ``len`` written in
those ``n`` ASCII digits, then exactly ``len`` bytes of data; e.g. ``b"#13abc"`` or ``b"#210" + 10 bytes``.
The indefinite form ``#0<data>`` is not supported.

Pure helpers (no I/O)::

    encode_block(payload)             -> b"#<n><len><payload>" with the shortest header
    decode_block(data)                -> payload of exactly one definite-length block
    block_digit_count(b"#<n>")        -> n, for links that read a block off the wire piece by piece
    block_length(b"<len>")            -> len
    preview(data)                     -> short printable rendering of raw bytes for error messages

Malformed blocks raise ``drivers.errors.ProtocolError`` naming the instrument and the command.
"""

from __future__ import annotations

from drivers.errors import ProtocolError


def encode_block(payload: bytes) -> bytes:
    """Wrap ``payload`` in a definite-length block: ``#`` + number of length digits + length + payload."""
    length = str(len(payload))
    if len(length) > 9:
        raise ValueError(f"binary block of {len(payload)} bytes is too long for an IEEE 488.2 header")
    return b"#" + str(len(length)).encode() + length.encode() + bytes(payload)


def block_digit_count(start: bytes, *, instrument: str = "instrument", command: str | None = None) -> int:
    """Number of length digits announced by the first two bytes ``#<n>`` of a block (1..9).

    Raises ProtocolError for anything else, including the indefinite form ``#0``.
    """
    if len(start) < 2 or start[:1] != b"#" or start[1:2] not in b"123456789":
        hint = " (indefinite-length '#0' blocks are not supported)" if start[:2] == b"#0" else ""
        raise ProtocolError(instrument, command,
                            f"expected a binary block starting '#<1-9>', got {preview(start)}{hint}")
    return int(start[1:2])


def block_length(digits: bytes, *, instrument: str = "instrument", command: str | None = None) -> int:
    """Payload length (bytes) given the ASCII length digits of a block header."""
    if not digits or not digits.isdigit():
        raise ProtocolError(instrument, command, f"binary block header has a non-numeric length {preview(digits)}")
    return int(digits)


def decode_block(data: bytes, *, instrument: str = "instrument", command: str | None = None) -> bytes:
    """Payload of exactly one definite-length block; a single trailing ``\\n`` or ``\\r\\n`` is allowed.

    Strict: a bad header, a payload shorter than declared or extra bytes after it raise ProtocolError.
    """
    n = block_digit_count(data[:2], instrument=instrument, command=command)
    if len(data) < 2 + n:
        raise ProtocolError(instrument, command, f"binary block header cut short: {preview(data)}")
    size = block_length(data[2:2 + n], instrument=instrument, command=command)
    payload = data[2 + n:2 + n + size]
    if len(payload) < size:
        raise ProtocolError(instrument, command,
                            f"binary block declared {size} bytes but only {len(payload)} arrived "
                            f"(starts {preview(data)})")
    rest = data[2 + n + size:]
    if rest not in (b"", b"\n", b"\r\n"):
        raise ProtocolError(instrument, command, f"{len(rest)} unexpected bytes after the binary block: "
                                                 f"{preview(rest)}")
    return payload


def preview(data: bytes, limit: int = 40) -> str:
    """Short printable rendering of raw bytes for error messages (the first ``limit`` bytes, then the total)."""
    text = repr(bytes(data[:limit]))
    return text + (f"... ({len(data)} bytes)" if len(data) > limit else "")
