"""A minimal reader of the protobuf wire format: enough to walk a `.caffemodel` without Caffe.

A message is a sequence of (field number, wire type, value); length-delimited values come back
as memoryview slices of the input, so 400 MB of weights are never copied before numpy views them.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

VARINT, FIXED64, LENGTH, FIXED32 = 0, 1, 2, 5


class TruncatedError(ValueError):
    """The message ends in the middle of a field; `field` and `start` (of its value) say where."""

    def __init__(self, message: str, field: int = 0, start: int = 0) -> None:
        super().__init__(message)
        self.field, self.start = field, start


def fields(data: memoryview) -> Iterator[tuple[int, int, int | memoryview]]:
    """Every (field number, wire type, value) of one message, in order."""
    position, end = 0, len(data)
    while position < end:
        key, position = varint(data, position)
        number, wire = key >> 3, key & 7
        if wire == VARINT:
            value, position = varint(data, position)
        elif wire == LENGTH:
            size, position = varint(data, position)
            if position + size > end:
                raise TruncatedError(
                    f"field {number} wants {size} bytes at offset {position}, {end - position} "
                    "left",
                    number,
                    position,
                )
            value, position = data[position : position + size], position + size
        elif wire in (FIXED32, FIXED64):
            size = 4 if wire == FIXED32 else 8
            if position + size > end:
                raise TruncatedError(f"field {number} is cut short at offset {position}")
            value = int.from_bytes(data[position : position + size], "little")
            position += size
        else:
            raise ValueError(
                f"wire type {wire} (field {number}) at offset {position}: not protobuf"
            )
        yield number, wire, value


def varint(data: memoryview, position: int) -> tuple[int, int]:
    """The varint at `position` and the offset after it."""
    result, shift = 0, 0
    while True:
        if position >= len(data):
            raise TruncatedError(f"a varint runs past the end at offset {position}")
        byte = data[position]
        position += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, position
        shift += 7
        if shift > 63:
            raise ValueError(f"a varint longer than 10 bytes at offset {position}: not protobuf")


def text(value: int | memoryview) -> str:
    """A string field's value."""
    if not isinstance(value, memoryview):
        raise ValueError("expected a string field, found a number")
    return bytes(value).decode("utf8", errors="replace")


def packed(values: list[int | memoryview], dtype: str) -> np.ndarray:
    """A repeated numeric field, packed (length-delimited) or not, as one array.

    dtype "<f4"/"<f8" for floats and doubles, "varint" for integers.
    """
    parts = []
    for value in values:
        if dtype == "varint":
            if isinstance(value, memoryview):
                decoded, position = [], 0
                while position < len(value):
                    number, position = varint(value, position)
                    decoded.append(number)
                parts.append(np.asarray(decoded, np.int64))
            else:
                parts.append(np.asarray([value], np.int64))
        elif isinstance(value, memoryview):
            parts.append(np.frombuffer(value, dtype))
        else:  # one unpacked fixed32/fixed64
            size = np.dtype(dtype).itemsize
            parts.append(np.frombuffer(value.to_bytes(size, "little"), dtype))
    if not parts:
        return np.zeros(0, np.int64 if dtype == "varint" else dtype)
    return parts[0] if len(parts) == 1 else np.concatenate(parts)
