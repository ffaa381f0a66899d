"""The one error hierarchy of raystream.

Every error a user can see derives from :class:`RaystreamError`. Each class carries two flags that retry
loops read instead of matching on types (the aiokafka way):

* ``retriable`` — the same request may succeed if sent again (after a backoff);
* ``invalid_metadata`` — the client's view of the cluster is stale: refresh metadata before retrying.

Errors cross Ray (actors raise them, clients catch them), so each one must pickle. ``BaseException``
pickles as ``cls(*self.args)``; every subclass therefore passes its message as the single positional
argument and keeps structured details in keyword-only attributes that we restore in ``__reduce__``.
"""

from __future__ import annotations

from typing import Any


class RaystreamError(Exception):
    """Base of every raystream error."""

    retriable: bool = False
    invalid_metadata: bool = False

    def __init__(self, message: str = "", **details: Any) -> None:
        super().__init__(message)
        self.details = details
        for key, value in details.items():
            setattr(self, key, value)

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else ""

    def __reduce__(self):  # keep details when crossing Ray / pickling
        return (_rebuild, (type(self), self.message, self.details))


def _rebuild(cls: type[RaystreamError], message: str, details: dict[str, Any]) -> RaystreamError:
    return cls(message, **details)


class RetriableError(RaystreamError):
    retriable = True


class InvalidMetadataError(RetriableError):
    invalid_metadata = True


# -- topics and partitions -------------------------------------------------------------------------------
class TopicAlreadyExistsError(RaystreamError):
    pass


class UnknownTopicOrPartitionError(InvalidMetadataError):
    pass


class InvalidTopicError(RaystreamError):
    pass


class InvalidPartitionsError(RaystreamError):
    pass


class InvalidReplicationFactorError(RaystreamError):
    pass


class InvalidConfigurationError(RaystreamError):
    pass


# -- records ---------------------------------------------------------------------------------------------
class RecordTooLargeError(RaystreamError):
    pass


class InvalidRecordError(RaystreamError):
    pass


class SchemaMismatchError(RaystreamError):
    pass


class CorruptRecordError(RaystreamError):
    """A stored batch failed its checksum or could not be decoded."""


# -- leadership and replication --------------------------------------------------------------------------
class NotLeaderError(InvalidMetadataError):
    pass


class LeaderNotAvailableError(InvalidMetadataError):
    pass


class FencedLeaderEpochError(InvalidMetadataError):
    """A request carried a leader epoch older than the replica's."""


class UnknownLeaderEpochError(RetriableError):
    """A request carried a leader epoch newer than the replica knows (it will learn it soon)."""


class NotEnoughReplicasError(RetriableError):
    pass


class NotEnoughReplicasAfterAppendError(RetriableError):
    pass


class OffsetOutOfRangeError(RaystreamError):
    pass


class RequestTimeoutError(RetriableError):
    pass


# -- producers and transactions --------------------------------------------------------------------------
class OutOfOrderSequenceError(RaystreamError):
    pass


class DuplicateSequenceError(RaystreamError):
    pass


class ProducerFencedError(RaystreamError):
    pass


class InvalidProducerEpochError(RaystreamError):
    pass


class InvalidTxnStateError(RaystreamError):
    pass


# -- consumers and groups --------------------------------------------------------------------------------
class CommitFailedError(RaystreamError):
    pass


class NoOffsetForPartitionError(RaystreamError):
    pass


class RebalanceInProgressError(RetriableError):
    pass


class UnknownMemberIdError(RaystreamError):
    pass


class IllegalGenerationError(RaystreamError):
    pass


class GroupNotEmptyError(RaystreamError):
    pass


class GroupIdNotFoundError(RaystreamError):
    pass


class InconsistentGroupProtocolError(RaystreamError):
    """No assignor is supported by every member (Kafka's INCONSISTENT_GROUP_PROTOCOL)."""


# -- handles and storage ---------------------------------------------------------------------------------
class InvalidRequestError(RaystreamError):
    """A Kafka-protocol request the gateway cannot read (Kafka's INVALID_REQUEST): a malformed, truncated or
    oversized frame, or an unknown API key. The gateway closes the connection, as Kafka's broker does."""


class UnsupportedVersionError(RaystreamError):
    """A Kafka-protocol API version the gateway does not serve (Kafka's UNSUPPORTED_VERSION)."""


class SaslAuthenticationError(RaystreamError):
    """SASL authentication failed: an unknown user, a wrong password or a malformed exchange (Kafka's
    SASL_AUTHENTICATION_FAILED). The gateway answers it and closes the connection, as Kafka's broker does."""


class AuthorizationError(RaystreamError):
    """The principal may not perform the operation on the resource (Kafka's TOPIC_, GROUP_, CLUSTER_ and
    TRANSACTIONAL_ID_AUTHORIZATION_FAILED); ``resource_type``, ``name`` and ``operation`` say which."""


class ClosedError(RaystreamError):
    """The handle (producer, consumer, admin, log) was closed."""


class KafkaStorageError(RetriableError):
    """A disk or log-directory failure on a replica."""


class LogDirectoryLockedError(KafkaStorageError):
    """Another owner holds the log directory's lock file."""

    retriable = False


class InvalidLogDirectoryError(KafkaStorageError):
    """A path that is not a raystream log directory."""

    retriable = False


class ClusterNotFoundError(RaystreamError):
    pass
