"""The error hierarchy: flags, details, and pickling (errors cross Ray as pickles)."""

from __future__ import annotations

import copy
import inspect
import pickle

import pytest

import raystream.errors as errors
from raystream.errors import RaystreamError

ALL_ERRORS = sorted((cls for _, cls in inspect.getmembers(errors, inspect.isclass)
                     if issubclass(cls, RaystreamError) and cls.__module__ == errors.__name__),
                    key=lambda cls: cls.__name__)


def test_the_hierarchy_is_complete():
    names = {cls.__name__ for cls in ALL_ERRORS}
    assert len(ALL_ERRORS) >= 30
    assert {"OffsetOutOfRangeError", "RecordTooLargeError", "SchemaMismatchError", "InvalidRecordError",
            "InvalidLogDirectoryError", "LogDirectoryLockedError", "ClosedError", "CorruptRecordError",
            "InvalidConfigurationError", "KafkaStorageError"} <= names


@pytest.mark.parametrize("cls", ALL_ERRORS, ids=lambda cls: cls.__name__)
@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_every_error_pickles_with_type_message_flags_and_details(cls, protocol):
    error = cls(f"{cls.__name__} happened", offset=42, log_end_offset=7, fields=["a", "b"], key="x.y")
    clone = pickle.loads(pickle.dumps(error, protocol=protocol))
    assert type(clone) is cls
    assert clone.message == error.message == str(clone) == f"{cls.__name__} happened"
    assert clone.args == error.args
    assert (clone.retriable, clone.invalid_metadata) == (error.retriable, error.invalid_metadata)
    assert (clone.offset, clone.log_end_offset, clone.fields, clone.key) == (42, 7, ["a", "b"], "x.y")
    assert clone.details == error.details
    assert isinstance(clone, RaystreamError)


@pytest.mark.parametrize("cls", ALL_ERRORS, ids=lambda cls: cls.__name__)
def test_every_error_pickles_without_details_and_copies(cls):
    for error in (cls("plain"), cls()):
        clone = pickle.loads(pickle.dumps(error))
        assert type(clone) is cls and clone.message == error.message and clone.details == {}
        assert type(copy.deepcopy(error)) is cls


def test_raised_errors_survive_pickling_with_their_flags():
    try:
        raise errors.NotLeaderError("not the leader", leader=3)
    except errors.RaystreamError as exc:
        clone = pickle.loads(pickle.dumps(exc))
    assert clone.retriable and clone.invalid_metadata and clone.leader == 3


@pytest.mark.parametrize("cls, retriable, invalid_metadata", [
    (errors.RaystreamError, False, False),
    (errors.RetriableError, True, False),
    (errors.InvalidMetadataError, True, True),
    (errors.NotLeaderError, True, True),
    (errors.UnknownTopicOrPartitionError, True, True),
    (errors.FencedLeaderEpochError, True, True),
    (errors.UnknownLeaderEpochError, True, False),
    (errors.RequestTimeoutError, True, False),
    (errors.KafkaStorageError, True, False),
    (errors.LogDirectoryLockedError, False, False),
    (errors.InvalidLogDirectoryError, False, False),
    (errors.OffsetOutOfRangeError, False, False),
    (errors.RecordTooLargeError, False, False),
    (errors.CorruptRecordError, False, False),
    (errors.ClosedError, False, False),
])
def test_flags(cls, retriable, invalid_metadata):
    assert (cls.retriable, cls.invalid_metadata) == (retriable, invalid_metadata)
    assert (cls("x").retriable, cls("x").invalid_metadata) == (retriable, invalid_metadata)
