"""raystream: Kafka-like event streaming on Ray, backed by an Arrow segment log."""

__version__ = "0.1.0"

# Public API names (Producer, Consumer, Topic, ...) get re-exported here in later issues.
