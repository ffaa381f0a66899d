"""Compatible schema evolution of Arrow-native topics: which changes are allowed, and reading old batches
with the new schema.

Rules (a new schema must read every old batch, like Avro's backward compatibility)::

    change                                   allowed
    ---------------------------------------  -----------------------------------------------------------
    add a column                             only if nullable (old rows read it as null)
    widen a column's type                    int8→int16→int32→int64, uint8→…→uint64, uintN→intM (M > N),
                                             float16→float32→float64, intN/uintN (N ≤ 32)→float64,
                                             string→large_string, binary→large_binary
    make a column nullable                   yes
    remove, rename, narrow, make non-null    no (SchemaMismatchError naming each field)

Pure functions; thread-safe.
"""

from __future__ import annotations

import pyarrow as pa

_INTS = [pa.int8(), pa.int16(), pa.int32(), pa.int64()]
_UINTS = [pa.uint8(), pa.uint16(), pa.uint32(), pa.uint64()]
_FLOATS = [pa.float16(), pa.float32(), pa.float64()]


def _widens(old: pa.DataType, new: pa.DataType) -> bool:
    if old.equals(new):
        return True
    for ladder in (_INTS, _UINTS, _FLOATS):
        if old in ladder and new in ladder:
            return ladder.index(new) > ladder.index(old)
    if old in _UINTS and new in _INTS:
        return _INTS.index(new) > _UINTS.index(old)
    if (old in _INTS[:3] or old in _UINTS[:3]) and new.equals(pa.float64()):
        return True
    return (old.equals(pa.string()) and new.equals(pa.large_string())) or (
        old.equals(pa.binary()) and new.equals(pa.large_binary()))


def compatibility_problems(old: pa.Schema, new: pa.Schema) -> list[str]:
    """Why ``new`` cannot replace ``old`` (empty: compatible), one message per field."""
    problems = []
    new_fields = {f.name: f for f in new}
    for field in old:
        target = new_fields.get(field.name)
        if target is None:
            problems.append(f"field {field.name!r} was removed (old batches carry it)")
        elif not _widens(field.type, target.type):
            problems.append(f"field {field.name!r} cannot change from {field.type} to {target.type}")
        elif field.nullable and not target.nullable:
            problems.append(f"field {field.name!r} cannot become non-nullable")
    old_names = set(old.names)
    problems += [f"new field {f.name!r} must be nullable (old rows have no value)" for f in new
                 if f.name not in old_names and not f.nullable]
    return problems


def evolve(data: pa.RecordBatch, target: pa.Schema) -> pa.RecordBatch:
    """``data`` (written under an older, compatible schema) as a batch of ``target``: widened columns cast,
    added columns null. Columns already of the right type are passed through without a copy."""
    if data.schema.equals(target):
        return data
    columns = []
    for field in target:
        index = data.schema.get_field_index(field.name)
        if index < 0:
            columns.append(pa.nulls(data.num_rows, field.type))
            continue
        column = data.column(index)
        columns.append(column if column.type.equals(field.type) else column.cast(field.type))
    return pa.RecordBatch.from_arrays(columns, schema=target)
