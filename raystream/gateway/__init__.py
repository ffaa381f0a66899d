"""The Kafka wire-protocol gateway: existing Kafka clients and tools talk to raystream over TCP.

Modules: :mod:`~raystream.gateway.framing` (frames, request and response headers), :mod:`~raystream.gateway.
entities` (building one API version's message from plain values), :mod:`~raystream.gateway.apis` (which APIs
and versions are served, and their handlers), :mod:`~raystream.gateway.server` (the asyncio TCP server).
Message encoding is kio's, generated from Kafka's own JSON message specs.
"""
