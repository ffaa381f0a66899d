"""Read-only inspection of a log directory, like ``kafka-dump-log``: every batch with its header fields and
whether its checksum holds. Opens files read-only and takes no lock, so it can run beside the owner."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa

from raystream.errors import CorruptRecordError
from raystream.storage.batch import BatchHeader, checksum_of, parse_frame, read_prefix
from raystream.storage.segment import DATA_SUFFIX


def dump_log(directory: str | Path) -> Iterator[dict]:
    """Yield one dict per segment (``kind='segment'``) followed by one per batch (``kind='batch'``)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory} is not a directory")
    for path in sorted(directory.glob("*" + DATA_SUFFIX)):
        yield from dump_segment(path)


def dump_segment(path: Path) -> Iterator[dict]:
    with pa.memory_map(str(path)) as mm:
        view = mm.read_buffer()
    try:
        position = 8 + read_prefix(view)
        schema = pa.ipc.read_schema(view.slice(0, position))
    except (CorruptRecordError, pa.ArrowException) as exc:
        yield {"kind": "segment", "file": path.name, "error": f"no readable schema: {exc}"}
        return
    yield {"kind": "segment", "file": path.name, "size": view.size,
           "schema": [f"{f.name}: {f.type}" for f in schema]}
    while position < view.size:
        rest = view.slice(position)
        try:
            frame = parse_frame(rest)
            if frame.total_length > rest.size:
                raise CorruptRecordError("torn batch (file ends inside it)")
            header = BatchHeader.unpack(frame.header_bytes)
        except CorruptRecordError as exc:
            yield {"kind": "batch", "position": position, "error": str(exc)}
            return
        valid = frame.crc_hex == b"%08x" % checksum_of(rest, frame)
        yield {"kind": "batch", "position": position, "size": frame.total_length,
               "base_offset": header.base_offset, "last_offset": header.last_offset,
               "count": header.record_count, "first_timestamp": header.first_timestamp,
               "max_timestamp": header.max_timestamp, "leader_epoch": header.leader_epoch,
               "producer_id": header.producer_id, "producer_epoch": header.producer_epoch,
               "base_sequence": header.base_sequence, "is_transactional": header.is_transactional,
               "is_control": header.is_control, "crc": frame.crc_hex.decode(errors="replace"),
               "crc_valid": valid}
        position += frame.total_length

