"""Small builders for OpenAPI v3 structural schemas.

Every CRD field is written once with these builders; the CRD YAML, the chart's CRDs and the
field documentation (`kubectl explain`) all come from that single description.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

Schema = dict[str, Any]

DURATION_PATTERN = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"
DNS_LABEL_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS_SUBDOMAIN_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"


@dataclass(frozen=True)
class Rule:
    """A CEL validation rule; `field_path` points the error message at the offending field."""

    rule: str
    message: str
    field_path: str | None = None
    reason: str | None = None

    def render(self) -> Schema:
        out: Schema = {"rule": self.rule, "message": self.message}
        if self.field_path:
            out["fieldPath"] = self.field_path
        if self.reason:
            out["reason"] = self.reason
        return out


def _node(kind: str, description: str, rules: tuple[Rule, ...] = (), **extra: Any) -> Schema:
    node: Schema = {"type": kind, "description": description}
    node.update({k: v for k, v in extra.items() if v is not None})
    if rules:
        node["x-kubernetes-validations"] = [r.render() for r in rules]
    return node


def string(
    description: str,
    *,
    enum: list[str] | None = None,
    pattern: str | None = None,
    min_length: int | None = None,
    max_length: int | None = None,
    default: str | None = None,
    fmt: str | None = None,
    rules: tuple[Rule, ...] = (),
) -> Schema:
    """A string field; enums, patterns and lengths let the API server reject bad values."""
    return _node(
        "string",
        description,
        rules,
        enum=enum,
        pattern=pattern,
        minLength=min_length,
        maxLength=max_length,
        default=default,
        format=fmt,
    )


def name_ref(description: str) -> Schema:
    """The name of another Kubernetes object (DNS-1123 subdomain)."""
    return string(description, pattern=DNS_SUBDOMAIN_PATTERN, min_length=1, max_length=253)


def duration(description: str, *, default: str | None = None) -> Schema:
    """A Go-style duration such as `30s`, `5m` or `1h30m`."""
    return string(description, pattern=DURATION_PATTERN, max_length=32, default=default)


def timestamp(description: str) -> Schema:
    """An RFC 3339 time, as Kubernetes writes metav1.Time."""
    return string(description, fmt="date-time")


def integer(
    description: str,
    *,
    minimum: int | None = None,
    maximum: int | None = None,
    default: int | None = None,
    fmt: str | None = "int64",
) -> Schema:
    """An integer field with optional bounds."""
    return _node(
        "integer",
        description,
        minimum=minimum,
        maximum=maximum,
        default=default,
        format=fmt,
    )


def number(description: str) -> Schema:
    """A floating-point number (sensor thresholds and similar)."""
    return _node("number", description)


def boolean(description: str, *, default: bool | None = None) -> Schema:
    """A boolean field."""
    return _node("boolean", description, default=default)


def array(
    description: str,
    items: Schema,
    *,
    max_items: int,
    min_items: int | None = None,
    map_keys: list[str] | None = None,
    set_list: bool = False,
    rules: tuple[Rule, ...] = (),
) -> Schema:
    """A bounded list; map keys make entries unique and mergeable by server-side apply."""
    node = _node("array", description, rules, items=items, maxItems=max_items, minItems=min_items)
    if map_keys:
        node["x-kubernetes-list-type"] = "map"
        node["x-kubernetes-list-map-keys"] = map_keys
    elif set_list:
        node["x-kubernetes-list-type"] = "set"
    return node


def obj(
    description: str,
    properties: dict[str, Schema] | None = None,
    *,
    required: tuple[str, ...] = (),
    rules: tuple[Rule, ...] = (),
    preserve_unknown: bool = False,
) -> Schema:
    """An object; `preserve_unknown` keeps an embedded foreign schema (a KubeVirt VM spec)."""
    node = _node("object", description, rules)
    if properties:
        node["properties"] = properties
    if required:
        node["required"] = list(required)
    if preserve_unknown:
        node["x-kubernetes-preserve-unknown-fields"] = True
    return node


def string_map(description: str, *, max_properties: int = 64) -> Schema:
    """A map of strings to strings (labels, annotations)."""
    node = _node("object", description, maxProperties=max_properties)
    node["additionalProperties"] = {"type": "string"}
    return node


def immutable(node: Schema, what: str) -> Schema:
    """Adds a rule that rejects any change after creation."""
    rule = Rule("self == oldSelf", f"{what} is immutable after creation")
    out = dict(node)
    out["x-kubernetes-validations"] = [*node.get("x-kubernetes-validations", []), rule.render()]
    return out


def set_once(path: str, what: str) -> Rule:
    """A rule for an object that always exists (``spec``): its optional field at ``path``
    (dotted, relative to it) cannot be set, changed or removed after creation.

    ``self == oldSelf`` on the field itself runs only when the old object has the field, so it
    would let an unset field be set later; this compares presence first."""
    steps = path.split(".")
    prefixes = [".".join(steps[: i + 1]) for i in range(len(steps))]

    def present(root: str) -> str:
        return "(" + " && ".join(f"has({root}.{p})" for p in prefixes) + ")"

    now, before = present("self"), present("oldSelf")
    return Rule(
        f"{now} == {before} && (!{now} || self.{path} == oldSelf.{path})",
        f"{what} is immutable: it can be set only when the object is created",
        field_path=f".{path}",
    )


def label_selector(description: str) -> Schema:
    """A metav1.LabelSelector."""
    requirement = obj(
        "A label selector requirement: a key, an operator and values.",
        {
            "key": string("The label key that the selector applies to.", max_length=317),
            "operator": string(
                "How the key relates to the values.",
                enum=["In", "NotIn", "Exists", "DoesNotExist"],
            ),
            "values": array(
                "Values for In and NotIn; must be empty for Exists and DoesNotExist.",
                string("A label value.", max_length=63),
                max_items=64,
                set_list=True,
            ),
        },
        required=("key", "operator"),
        rules=(
            Rule(
                "self.operator in ['In', 'NotIn'] ? has(self.values) && size(self.values) > 0"
                " : !has(self.values) || size(self.values) == 0",
                "values must be non-empty for In and NotIn and empty for Exists and DoesNotExist",
                field_path=".values",
            ),
        ),
    )
    return obj(
        description,
        {
            "matchLabels": string_map("Labels that must all match exactly."),
            "matchExpressions": array(
                "Requirements that must all hold.", requirement, max_items=32
            ),
        },
        rules=(
            Rule(
                "has(self.matchLabels) || has(self.matchExpressions)",
                "a selector needs matchLabels or matchExpressions; use an explicit field to "
                "select everything",
            ),
        ),
    )


def conditions(description: str) -> Schema:
    """A list of metav1.Condition, keyed by type."""
    condition = obj(
        "One aspect of the object's current state, shaped like metav1.Condition.",
        {
            "type": string(
                "The condition type in CamelCase, such as Ready.",
                max_length=316,
                pattern=r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
                r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])$",
            ),
            "status": string("Whether the condition holds.", enum=["True", "False", "Unknown"]),
            "reason": string(
                "A CamelCase, machine-readable reason for the last transition.",
                min_length=1,
                max_length=1024,
                pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$",
            ),
            "message": string("A human-readable explanation.", max_length=32768),
            "observedGeneration": integer(
                "The metadata.generation this condition was computed from.", minimum=0
            ),
            "lastTransitionTime": timestamp("When the status last changed."),
        },
        required=("type", "status", "reason", "message", "lastTransitionTime"),
    )
    return array(description, condition, max_items=16, map_keys=["type"])


def observed_generation() -> Schema:
    """status.observedGeneration: which spec the status describes."""
    return integer("The metadata.generation the operator last acted on.", minimum=0)


# A non-negative size in bytes written as a Kubernetes quantity (`1Gi`, `512Mi`, `1500M`,
# `1073741824`): no sign, no milli suffix, no exponent.
SIZE_PATTERN = r"^[0-9]+(\.[0-9]+)?([KMGTPE]i|[kMGTPE])?$"


def size(description: str, *, default: str | None = None) -> Schema:
    """A size in bytes as a quantity string; CEL's quantity() reads it for comparisons."""
    return string(description, pattern=SIZE_PATTERN, max_length=32, default=default)
