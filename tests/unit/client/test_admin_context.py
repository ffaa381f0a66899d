"""Admin, the current-cluster context, and the Ray error mapping (without starting Ray)."""

from __future__ import annotations

import subprocess
import sys

import pyarrow as pa
import pytest
from fake_transport import FakeTransport

from raystream import errors
from raystream.client import Admin, Consumer, Producer, context
from raystream.protocol import TopicDescription


def test_admin_topic_lifecycle(fake):
    admin = Admin(transport=fake)
    admin.create_topic("orders", partitions=3, replication_factor=2, config={"retention.ms": 1000})
    assert admin.list_topics() == ["orders"]
    description = admin.describe_topic("orders")
    assert isinstance(description, TopicDescription) and len(description.partitions) == 3
    admin.alter_topic_config("orders", {"retention.ms": 5})
    assert fake.topics["orders"].config["retention.ms"] == 5
    admin.create_partitions("orders", total=5)
    assert len(admin.describe_topic("orders").partitions) == 5
    with pytest.raises(errors.TopicAlreadyExistsError):
        admin.create_topic("orders")
    admin.delete_topic("orders")
    assert admin.list_topics() == []


def test_admin_serialises_the_schema(fake):
    schema = pa.schema([("user", pa.string()), ("amount", pa.int64())])
    Admin(transport=fake).create_topic("ev", schema=schema, key_column="user")
    call = next(c for c in fake.calls if c[0] == "create_topic")
    assert call[5] == schema.serialize().to_pybytes()
    assert call[6] == "user"
    assert fake.topics["ev"].schema.equals(schema)


def test_admin_argument_errors_before_remote_calls(fake):
    admin = Admin(transport=fake)
    bad = [dict(name=1), dict(name=""), dict(name="t", partitions=0), dict(name="t", partitions="1"),
           dict(name="t", replication_factor=0), dict(name="t", config=[("a", 1)]),
           dict(name="t", schema="not a schema"), dict(name="t", key_column="nope"),
           dict(name="t", schema=pa.schema([("_offset", pa.int64())]))]
    for kwargs in bad:
        with pytest.raises((TypeError, ValueError, errors.SchemaMismatchError, errors.InvalidTopicError)):
            admin.create_topic(**kwargs)
    with pytest.raises(ValueError):
        admin.create_partitions("t", total=0)
    with pytest.raises(TypeError):
        admin.alter_topic_config("t", None)
    assert fake.calls == []


def test_admin_groups_and_close(fake):
    with Admin(transport=fake) as admin:
        with pytest.raises(NotImplementedError):
            admin.list_groups()
        with pytest.raises(NotImplementedError):
            admin.describe_group("g")
    with pytest.raises(errors.ClosedError):
        admin.list_topics()


def test_clients_need_a_current_cluster():
    for make in (Admin, Producer, Consumer):
        with pytest.raises(errors.ClusterNotFoundError, match="raystream.init"):
            make()


def test_clients_use_the_current_cluster(fake):
    context.set_current(fake)
    assert context.get_current() is fake
    Admin().create_topic("t")
    with Producer(linger_ms=0) as producer:
        assert producer.send("t", value=b"x").result(10).offset == 0
    assert context.resolve("test") is fake  # by cluster name
    other = FakeTransport(cluster="other")
    assert context.resolve(transport=other) is other
    with pytest.raises(ValueError):
        context.resolve(cluster="test", transport=other)
    with pytest.raises(TypeError):
        context.set_current("not a transport")
    context.set_current(None)
    with pytest.raises(errors.ClusterNotFoundError):
        context.get_current()


def test_client_package_does_not_import_ray():
    code = ("import sys, raystream.client, raystream.client.context as c; "
            "assert 'ray' not in sys.modules, 'ray imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


ray_exceptions = pytest.importorskip("ray.exceptions")


def test_ray_errors_map_to_raystream_errors():
    from raystream.client.transport import RayTransport, Transport, map_ray_error

    assert Transport is RayTransport
    cause = errors.NotLeaderError("moved", leader=2)
    task_error = ray_exceptions.RayTaskError("produce", "traceback", cause)
    mapped = map_ray_error(task_error.as_instanceof_cause(), "produce t-0")
    assert mapped is cause and mapped.invalid_metadata
    assert map_ray_error(ray_exceptions.RayTaskError("f", "tb", ValueError("x")), "f").args == ("x",)
    died = map_ray_error(ray_exceptions.ActorDiedError(), "fetch t-0")
    assert isinstance(died, errors.LeaderNotAvailableError) and died.retriable and died.invalid_metadata
    unavailable = map_ray_error(ray_exceptions.ActorUnavailableError("gone", None), "fetch t-0")
    assert isinstance(unavailable, errors.LeaderNotAvailableError)
    timeout = map_ray_error(ray_exceptions.GetTimeoutError("slow"), "controller.get_metadata")
    assert isinstance(timeout, errors.RequestTimeoutError)
    other = map_ray_error(ray_exceptions.RaySystemError("boom"), "x")
    assert type(other) is errors.RaystreamError
    plain = errors.CorruptRecordError("crc")
    assert map_ray_error(plain, "x") is plain
