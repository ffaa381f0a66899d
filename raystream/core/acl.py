"""Access control lists, decided as Kafka's authorizer decides them.

An ACL binds a *resource pattern* (a resource type; a name, which is a literal name, the literal wildcard
``*`` or a prefix) to an *entry* (a principal such as ``User:alice`` or the wildcard ``User:*``, a client
host or ``*``, an operation, ALLOW or DENY). :meth:`Authorizer.authorize` answers whether a principal
connecting from a host may perform an operation on one named resource:

1. a super user may do everything;
2. a matching DENY entry for the operation (or for ``All``) refuses: deny wins over any allow;
3. a matching ALLOW entry for the operation, for ``All``, or for an operation that implies it allows
   (``Read``, ``Write``, ``Delete`` and ``Alter`` imply ``Describe``; ``AlterConfigs`` implies
   ``DescribeConfigs``);
4. otherwise the answer is no (default deny), unless no ACL at all names the resource and
   ``allow_everyone_if_no_acl_found`` is set (Kafka's ``allow.everyone.if.no.acl.found``, false by default).

Resource types are Kafka's: ``Topic``, ``Group``, ``Cluster`` (the one resource ``kafka-cluster``) and
``TransactionalId``; operations are Kafka's names (``Read``, ``Write``, ``Create``, ``Delete``, ``Alter``,
``Describe``, ``ClusterAction``, ``DescribeConfigs``, ``AlterConfigs``, ``IdempotentWrite``, ``All``).

Pure: no I/O, no clock; an :class:`Authorizer` is immutable once built, so any number of threads and
connections may ask it at once.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Iterable, Mapping
from typing import Any

from raystream.errors import AuthorizationError, InvalidConfigurationError

WILDCARD = "*"
WILDCARD_PRINCIPAL = "User:*"
ANONYMOUS = "User:ANONYMOUS"
CLUSTER_NAME = "kafka-cluster"


class ResourceType(enum.Enum):
    TOPIC = "Topic"
    GROUP = "Group"
    CLUSTER = "Cluster"
    TRANSACTIONAL_ID = "TransactionalId"


class Operation(enum.Enum):
    READ = "Read"
    WRITE = "Write"
    CREATE = "Create"
    DELETE = "Delete"
    ALTER = "Alter"
    DESCRIBE = "Describe"
    CLUSTER_ACTION = "ClusterAction"
    DESCRIBE_CONFIGS = "DescribeConfigs"
    ALTER_CONFIGS = "AlterConfigs"
    IDEMPOTENT_WRITE = "IdempotentWrite"
    ALL = "All"


class PatternType(enum.Enum):
    LITERAL = "Literal"
    PREFIXED = "Prefixed"


class Permission(enum.Enum):
    ALLOW = "Allow"
    DENY = "Deny"


#: operation -> the operations whose ALLOW also allows it (besides itself and All), as in Kafka.
IMPLIED_BY: dict[Operation, frozenset[Operation]] = {
    Operation.DESCRIBE: frozenset({Operation.READ, Operation.WRITE, Operation.DELETE, Operation.ALTER}),
    Operation.DESCRIBE_CONFIGS: frozenset({Operation.ALTER_CONFIGS}),
}


def _parse_enum(cls: type[enum.Enum], value: Any, key: str) -> Any:
    """An enum member from its Kafka name in any case, with or without ``_`` (``describe_configs``)."""
    if isinstance(value, cls):
        return value
    wanted = str(value).replace("_", "").replace("-", "").lower()
    for member in cls:
        if member.value.lower() == wanted:
            return member
    raise InvalidConfigurationError(f"{key}: expected one of {', '.join(m.value for m in cls)}, got {value!r}",
                                    key=key)


@dataclasses.dataclass(frozen=True)
class Acl:
    """One ACL binding: a resource pattern and an access control entry."""

    principal: str
    operation: Operation
    resource_type: ResourceType
    resource_name: str
    pattern_type: PatternType = PatternType.LITERAL
    permission: Permission = Permission.ALLOW
    host: str = WILDCARD

    def __post_init__(self) -> None:
        kind, sep, name = self.principal.partition(":")
        if not sep or not kind or not name:
            raise InvalidConfigurationError(f"ACL principal {self.principal!r}: expected TYPE:NAME "
                                            f"(User:alice, or User:* for everyone)", key="principal")
        if not self.resource_name:
            raise InvalidConfigurationError("ACL resource_name: empty", key="resource_name")
        if self.pattern_type is PatternType.PREFIXED and self.resource_name == WILDCARD:
            raise InvalidConfigurationError("ACL resource_name '*' is a literal wildcard, not a prefix",
                                            key="resource_name")

    def names(self, resource_name: str) -> bool:
        """Whether this ACL's pattern covers the resource called ``resource_name``."""
        if self.pattern_type is PatternType.PREFIXED:
            return resource_name.startswith(self.resource_name)
        return self.resource_name in (WILDCARD, resource_name)

    def applies_to(self, principal: str, host: str) -> bool:
        return self.principal in (principal, WILDCARD_PRINCIPAL) and self.host in (host, WILDCARD)

    @classmethod
    def from_mapping(cls, value: Any, where: str = "acl") -> list[Acl]:
        """The ACLs of one configuration entry (``operation`` may list several operations)::

            {principal: User:alice, operation: [Read, Describe], resource_type: topic,
             resource_name: orders, pattern_type: literal, permission: allow, host: "*"}
        """
        if not isinstance(value, Mapping):
            raise InvalidConfigurationError(f"{where}: expected a mapping", key=where)
        keys = {"principal", "operation", "resource_type", "resource_name", "pattern_type", "permission", "host"}
        unknown = sorted(str(k) for k in value if str(k) not in keys)
        if unknown or "principal" not in value or "operation" not in value or "resource_type" not in value:
            raise InvalidConfigurationError(f"{where}: needs principal, operation and resource_type (also known: "
                                            f"resource_name, pattern_type, permission, host); unknown: {unknown}",
                                            key=where)
        resource_type = _parse_enum(ResourceType, value["resource_type"], f"{where}.resource_type")
        name = value.get("resource_name", CLUSTER_NAME if resource_type is ResourceType.CLUSTER else None)
        if name is None:
            raise InvalidConfigurationError(f"{where}.resource_name: missing", key=where)
        operations = value["operation"] if isinstance(value["operation"], list) else [value["operation"]]
        try:
            return [cls(str(value["principal"]), _parse_enum(Operation, op, f"{where}.operation"), resource_type,
                        str(name), _parse_enum(PatternType, value.get("pattern_type", "literal"),
                                               f"{where}.pattern_type"),
                        _parse_enum(Permission, value.get("permission", "allow"), f"{where}.permission"),
                        str(value.get("host", WILDCARD))) for op in operations]
        except InvalidConfigurationError as exc:
            raise InvalidConfigurationError(f"{where}: {exc.message}", key=where) from None


def _allows(acl_operation: Operation, wanted: Operation) -> bool:
    return acl_operation in (wanted, Operation.ALL) or acl_operation in IMPLIED_BY.get(wanted, ())


class Authorizer:
    """Decides requests against a fixed list of ACLs (see the module docstring)."""

    def __init__(self, acls: Iterable[Acl] = (), super_users: Iterable[str] = (),
                 allow_everyone_if_no_acl_found: bool = False) -> None:
        self.acls = tuple(acls)
        self.super_users = frozenset(super_users)
        self.allow_everyone_if_no_acl_found = allow_everyone_if_no_acl_found
        self._by_type: dict[ResourceType, tuple[Acl, ...]] = {
            kind: tuple(a for a in self.acls if a.resource_type is kind) for kind in ResourceType}

    def authorize(self, principal: str, host: str, operation: Operation, resource_type: ResourceType,
                  resource_name: str) -> bool:
        """Whether ``principal`` connecting from ``host`` may perform ``operation`` on the resource."""
        if principal in self.super_users:
            return True
        on_resource = [a for a in self._by_type[resource_type] if a.names(resource_name)]
        if not on_resource:
            return self.allow_everyone_if_no_acl_found
        mine = [a for a in on_resource if a.applies_to(principal, host)]
        if any(a.permission is Permission.DENY and a.operation in (operation, Operation.ALL) for a in mine):
            return False
        return any(a.permission is Permission.ALLOW and _allows(a.operation, operation) for a in mine)

    def authorize_any(self, principal: str, host: str, operation: Operation, resource_type: ResourceType) -> bool:
        """Whether ``principal`` may perform ``operation`` on *some* resource of the type (Kafka's
        authorizeByResourceType, as InitProducerId asks for Write on any topic): an ALLOW not cancelled by
        a DENY covering it; refused outright by a DENY on the literal wildcard."""
        if principal in self.super_users:
            return True
        typed = self._by_type[resource_type]
        mine = [a for a in typed if a.applies_to(principal, host)]
        denies = [a for a in mine if a.permission is Permission.DENY and a.operation in (operation, Operation.ALL)]
        if any(d.pattern_type is PatternType.LITERAL and d.resource_name == WILDCARD for d in denies):
            return False
        for allow in mine:
            if allow.permission is Permission.ALLOW and _allows(allow.operation, operation) and not any(
                    _covers(d, allow) for d in denies):
                return True
        return not typed and self.allow_everyone_if_no_acl_found

    def check(self, principal: str, host: str, operation: Operation, resource_type: ResourceType,
              resource_name: str) -> None:
        """Raise :class:`~raystream.errors.AuthorizationError` unless :meth:`authorize` allows it."""
        if not self.authorize(principal, host, operation, resource_type, resource_name):
            raise AuthorizationError(f"{principal} may not {operation.value} {resource_type.value} "
                                     f"{resource_name!r}", principal=principal, operation=operation.value,
                                     resource_type=resource_type.value, name=resource_name)

    @classmethod
    def from_mapping(cls, value: Any) -> Authorizer:
        """The authorizer of a configuration's ``authorization`` mapping::

            super_users: [User:admin]
            allow_everyone_if_no_acl_found: false
            acls: [{principal: User:alice, operation: Write, resource_type: topic, resource_name: orders}, ...]
        """
        if value is None:
            value = {}
        if not isinstance(value, Mapping):
            raise InvalidConfigurationError("authorization: expected a mapping", key="authorization")
        known = ("super_users", "allow_everyone_if_no_acl_found", "acls")
        data = {str(k).replace(".", "_"): v for k, v in value.items()}
        unknown = sorted(k for k in data if k not in known)
        if unknown:
            raise InvalidConfigurationError(f"authorization: unknown keys {unknown}; expected {', '.join(known)}",
                                            key="authorization")
        supers, entries = data.get("super_users") or [], data.get("acls") or []
        allow_everyone = data.get("allow_everyone_if_no_acl_found", False)
        if isinstance(supers, str):
            supers = [s.strip() for s in supers.split(";") if s.strip()]  # Kafka's super.users form
        if not isinstance(supers, list) or not isinstance(entries, list) or not isinstance(allow_everyone, bool):
            raise InvalidConfigurationError("authorization: super_users and acls are lists, "
                                            "allow_everyone_if_no_acl_found a boolean", key="authorization")
        acls = [acl for i, entry in enumerate(entries) for acl in Acl.from_mapping(entry, f"authorization.acls[{i}]")]
        return cls(acls, [str(s) for s in supers], allow_everyone)


def _covers(deny: Acl, allow: Acl) -> bool:
    """Whether ``deny``'s pattern covers every resource that ``allow``'s does."""
    if deny.pattern_type is PatternType.LITERAL:
        return deny.resource_name == WILDCARD or (
            allow.pattern_type is PatternType.LITERAL and deny.resource_name == allow.resource_name)
    return allow.resource_name.startswith(deny.resource_name) and allow.resource_name != WILDCARD
