"""The unit that flows between a stream task's operators: a batch of records, column-wise.

A :class:`Batch` has keys, values and event times (int64 ms). Keys and values are each in one of two forms,
converted only when an operator needs the other one:

* **Arrow** — keys an Arrow array (as read: a binary column still encoded with ``key_serde``, or a typed key
  column of an Arrow-native topic); values a ``pyarrow.Table`` (the row columns of an Arrow-native topic, or
  a single binary ``value`` column still encoded with ``value_serde``). Vectorised operators
  (``filter(expr)``, ``map_batches``, the built-in aggregations) stay in this form: no Python per record.
* **Python** — lists of decoded keys and values, for operators that run a Python function per record.

Pure; a batch is owned by one task thread at a time.
"""

from __future__ import annotations

import dataclasses
import io
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.json as pa_json

from raystream.streams.serde import BYTES, JSON, Serde

VALUE_COLUMN = "value"


def _is_binary(arr: pa.Array | pa.ChunkedArray) -> bool:
    return pa.types.is_binary(arr.type) or pa.types.is_large_binary(arr.type)


@dataclasses.dataclass
class Batch:
    keys: pa.Array | pa.ChunkedArray | list
    values: pa.Table | list
    timestamps: np.ndarray
    key_serde: Serde = BYTES
    #: Set while ``values`` is a one-column table of still-encoded values (how a schema-less topic reads).
    value_serde: Serde | None = None

    def __len__(self) -> int:
        return len(self.timestamps)

    # -- keys --------------------------------------------------------------------------------------------
    def py_keys(self) -> list:
        if isinstance(self.keys, list):
            return self.keys
        if _is_binary(self.keys) and self.key_serde.name != "bytes":
            return self.key_serde.decode_many(self.keys)
        return self.keys.to_pylist()

    def encoded_keys(self) -> pa.Array:
        """The keys as a binary Arrow array (what state stores, changelogs and topics hold)."""
        keys = self.keys
        if not isinstance(keys, list) and _is_binary(keys):
            return keys.combine_chunks() if isinstance(keys, pa.ChunkedArray) else keys
        return self.key_serde.encode_many(keys)

    # -- values ------------------------------------------------------------------------------------------
    def py_values(self) -> list:
        if isinstance(self.values, list):
            return self.values
        if self.value_serde is not None:
            return self.value_serde.decode_many(self.values.column(VALUE_COLUMN))
        return self.values.to_pylist()

    def arrow_values(self) -> pa.Table:
        """The values as a table: rows of dicts become columns; other values a ``value`` column; JSON-encoded
        values are parsed by Arrow's JSON reader (vectorised)."""
        values = self.values
        if isinstance(values, list):
            return table_of_values(values)
        if self.value_serde is None or self.value_serde.name == "bytes":
            return values
        if self.value_serde is JSON and len(values):
            parsed = _parse_json_column(values.column(VALUE_COLUMN))
            if parsed is not None:
                return parsed
        return table_of_values(self.py_values())

    def encoded_values(self, serde: Serde) -> pa.Array:
        """The values as a binary Arrow array encoded with ``serde`` (no Python objects when they are
        already encoded with it)."""
        if not isinstance(self.values, list) and self.value_serde is not None and (
                self.value_serde is serde or serde.name == "bytes"):
            return self.values.column(VALUE_COLUMN).combine_chunks()
        return serde.encode_many(self.py_values())

    # -- selection ---------------------------------------------------------------------------------------
    def take(self, indices: np.ndarray) -> Batch:
        """The records at ``indices`` (an int array, or a boolean mask), in that order."""
        indices = np.asarray(indices)
        if indices.dtype == bool:
            indices = np.flatnonzero(indices)
        picked = pa.array(indices, pa.int64())
        keys = [self.keys[i] for i in indices] if isinstance(self.keys, list) else self.keys.take(picked)
        values = [self.values[i] for i in indices] if isinstance(self.values, list) else self.values.take(picked)
        return dataclasses.replace(self, keys=keys, values=values, timestamps=self.timestamps[indices])

    def with_python(self, keys: list | None = None, values: list | None = None,
                    timestamps: np.ndarray | None = None) -> Batch:
        """This batch with new Python keys and/or values (same length unless ``timestamps`` says)."""
        return dataclasses.replace(
            self, keys=self.py_keys() if keys is None else keys,
            values=self.py_values() if values is None else values, value_serde=None,
            timestamps=self.timestamps if timestamps is None else np.asarray(timestamps, np.int64))


def table_of_values(values: list) -> pa.Table:
    if values and all(isinstance(v, dict) for v in values):
        return pa.Table.from_pylist(values)
    return pa.table({VALUE_COLUMN: pa.array(values)})


def _parse_json_column(column: pa.ChunkedArray) -> pa.Table | None:
    """One JSON object per value → a table, or None when the values are not all one-line JSON objects
    (then the caller parses in Python)."""
    if column.null_count:
        return None
    data = b"\n".join(column.to_pylist())
    if data.count(b"\n") != len(column) - 1 or not data.lstrip().startswith(b"{"):
        return None
    try:
        table = pa_json.read_json(io.BytesIO(data))
    except pa.ArrowInvalid:
        return None
    return table if table.num_rows == len(column) else None


def empty_like(batch: Batch) -> Batch:
    return batch.take(np.zeros(0, np.int64))


def from_python(keys: list, values: list, timestamps: Any, key_serde: Serde = BYTES) -> Batch:
    return Batch(list(keys), list(values), np.asarray(timestamps, np.int64), key_serde)
