"""Pure tests of the authorizer (raystream.core.acl): Kafka's operation implications, literal, wildcard and
prefixed patterns, deny winning, default deny, super users, hosts, and reading ACLs from a config."""

from __future__ import annotations

import pytest

from raystream.core.acl import Acl, Authorizer, Operation, PatternType, Permission, ResourceType
from raystream.errors import AuthorizationError, InvalidConfigurationError

T, G, C = ResourceType.TOPIC, ResourceType.GROUP, ResourceType.CLUSTER
Op = Operation


def acl(principal, operation, kind, name, pattern=PatternType.LITERAL, permission=Permission.ALLOW, host="*"):
    return Acl(principal, operation, kind, name, pattern, permission, host)


def test_read_and_write_imply_describe_but_not_each_other():
    auth = Authorizer([acl("User:a", Op.WRITE, T, "orders"), acl("User:b", Op.ALTER_CONFIGS, T, "orders")])
    assert auth.authorize("User:a", "h", Op.WRITE, T, "orders")
    assert auth.authorize("User:a", "h", Op.DESCRIBE, T, "orders")
    assert not auth.authorize("User:a", "h", Op.READ, T, "orders")
    assert auth.authorize("User:b", "h", Op.DESCRIBE_CONFIGS, T, "orders")
    assert not auth.authorize("User:b", "h", Op.DESCRIBE, T, "orders")


def test_default_deny_unless_no_acl_names_the_resource_and_everyone_is_allowed():
    acls = [acl("User:a", Op.READ, T, "orders")]
    assert not Authorizer(acls).authorize("User:x", "h", Op.READ, T, "payments")
    open_by_default = Authorizer(acls, allow_everyone_if_no_acl_found=True)
    assert open_by_default.authorize("User:x", "h", Op.READ, T, "payments")  # no ACL names payments
    assert not open_by_default.authorize("User:x", "h", Op.READ, T, "orders")  # one does


def test_prefixed_and_wildcard_patterns_and_deny_wins():
    auth = Authorizer([
        acl("User:a", Op.READ, T, "metrics.", PatternType.PREFIXED),
        acl("User:a", Op.READ, T, "metrics.secret", permission=Permission.DENY),
        acl("User:*", Op.DESCRIBE, T, "*"),
        acl("User:b", Op.ALL, G, "*"),
        acl("User:b", Op.ALL, G, "admin", permission=Permission.DENY),
    ])
    assert auth.authorize("User:a", "h", Op.READ, T, "metrics.cpu")
    assert not auth.authorize("User:a", "h", Op.READ, T, "metrics.secret")
    assert auth.authorize("User:a", "h", Op.DESCRIBE, T, "metrics.secret")  # a deny of Read denies Read only
    assert not auth.authorize("User:a", "h", Op.READ, T, "metric")
    assert auth.authorize("User:anyone", "h", Op.DESCRIBE, T, "whatever")
    assert auth.authorize("User:b", "h", Op.DELETE, G, "g1")
    assert not auth.authorize("User:b", "h", Op.READ, G, "admin")  # All denied: every operation


def test_super_users_and_hosts():
    auth = Authorizer([acl("User:a", Op.READ, T, "t", host="10.0.0.1"),
                       acl("User:root", Op.ALL, T, "t", permission=Permission.DENY)], super_users=["User:root"])
    assert auth.authorize("User:a", "10.0.0.1", Op.READ, T, "t")
    assert not auth.authorize("User:a", "10.0.0.2", Op.READ, T, "t")
    assert auth.authorize("User:root", "any", Op.DELETE, C, "kafka-cluster")  # super users skip the ACLs
    with pytest.raises(AuthorizationError) as refused:
        auth.check("User:a", "10.0.0.2", Op.READ, T, "t")
    assert refused.value.resource_type == "Topic" and refused.value.operation == "Read"


def test_authorize_any_is_kafkas_authorize_by_resource_type():
    assert Authorizer([acl("User:a", Op.WRITE, T, "x")]).authorize_any("User:a", "h", Op.WRITE, T)
    assert not Authorizer([acl("User:a", Op.READ, T, "x")]).authorize_any("User:a", "h", Op.WRITE, T)
    covered = Authorizer([acl("User:a", Op.WRITE, T, "logs.app"),
                          acl("User:a", Op.WRITE, T, "logs.", PatternType.PREFIXED, Permission.DENY)])
    assert not covered.authorize_any("User:a", "h", Op.WRITE, T)
    wildcard_deny = Authorizer([acl("User:a", Op.WRITE, T, "x"),
                                acl("User:a", Op.WRITE, T, "*", permission=Permission.DENY)])
    assert not wildcard_deny.authorize_any("User:a", "h", Op.WRITE, T)
    assert Authorizer([], allow_everyone_if_no_acl_found=True).authorize_any("User:a", "h", Op.WRITE, T)


def test_acls_from_a_config_mapping():
    auth = Authorizer.from_mapping({
        "super.users": "User:admin;User:ops", "allow.everyone.if.no.acl.found": False,
        "acls": [{"principal": "User:a", "operation": ["read", "describe_configs"], "resource_type": "TOPIC",
                  "resource_name": "t", "pattern_type": "Prefixed", "permission": "allow"},
                 {"principal": "User:a", "operation": "Create", "resource_type": "cluster"}]})
    assert auth.super_users == {"User:admin", "User:ops"}
    assert [(a.operation, a.pattern_type) for a in auth.acls[:2]] == [(Op.READ, PatternType.PREFIXED),
                                                                     (Op.DESCRIBE_CONFIGS, PatternType.PREFIXED)]
    assert auth.authorize("User:a", "h", Op.CREATE, C, "kafka-cluster")
    for bad in ({"acls": [{"principal": "User:a", "operation": "Fly", "resource_type": "topic", "resource_name": "t"}]},
                {"acls": [{"principal": "a", "operation": "Read", "resource_type": "topic", "resource_name": "t"}]},
                {"acls": [{"principal": "User:a", "operation": "Read", "resource_type": "topic"}]},
                {"acls": [{"principal": "User:a", "operation": "Read", "resource_type": "topic", "resource_name": "*",
                           "pattern_type": "prefixed"}]},
                {"acl": []}, {"acls": "not a list"}):
        with pytest.raises(InvalidConfigurationError):
            Authorizer.from_mapping(bad)
