"""Ray actors (brokers, partition leaders, coordinators) built on top of raystream.storage."""
