"""ConditionProfile: cluster-wide rules that turn node conditions into SaveEvents."""

from lparkube.api.resource import AGE_COLUMN, CustomResource, PrinterColumn, condition_column
from lparkube.api.schema import (
    DNS_LABEL_PATTERN,
    Rule,
    array,
    boolean,
    conditions,
    duration,
    label_selector,
    number,
    obj,
    observed_generation,
    string,
    timestamp,
)
from lparkube.api.v1alpha1.saveevent import REASONS

OPERATORS = [
    "GreaterThan",
    "GreaterThanOrEqual",
    "LessThan",
    "LessThanOrEqual",
    "Equal",
    "NotEqual",
]

NODE_CONDITION = obj(
    "Fires while a Node condition (as node-problem-detector sets it) has this status.",
    {
        "type": string("The condition type, such as ThermalPressure.", min_length=1),
        "status": string(
            "The status that fires the rule.", enum=["True", "False", "Unknown"], default="True"
        ),
    },
    required=("type",),
)

TAINT = obj(
    "Fires while the node carries a matching taint.",
    {
        "key": string("The taint key.", min_length=1, max_length=317),
        "value": string("The taint value; any value when omitted.", max_length=63),
        "effect": string(
            "The taint effect; any effect when omitted.",
            enum=["NoSchedule", "PreferNoSchedule", "NoExecute"],
        ),
    },
    required=("key",),
)

SENSOR = obj(
    "Fires while a numeric node label or annotation, such as one a BMC exporter writes, "
    "compares true with value. Set exactly one of label and annotation.",
    {
        "label": string("The node label holding the reading.", max_length=317),
        "annotation": string("The node annotation holding the reading.", max_length=317),
        "operator": string("How the reading compares with value.", enum=OPERATORS),
        "value": number("The threshold, such as 95 (degrees C) or 2 (percent battery)."),
    },
    required=("operator", "value"),
    rules=(
        Rule(
            "has(self.label) != has(self.annotation)",
            "set exactly one of sensor.label and sensor.annotation",
        ),
    ),
)

PROMETHEUS_QUERY = obj(
    "Fires while a PromQL query returns a non-empty result; the result's node label names "
    "the affected nodes.",
    {
        "query": string("The PromQL expression.", min_length=1, max_length=4096),
        "nodeLabel": string(
            "The series label that holds the node name.", default="node", max_length=128
        ),
    },
    required=("query",),
)

TRIGGER_RULE = obj(
    "A rule: one trigger, how long it must hold, how often it may fire, and whom it affects.",
    {
        "name": string(
            "Unique within the profile.", pattern=DNS_LABEL_PATTERN, min_length=1, max_length=63
        ),
        "reason": string("The reason recorded on the SaveEvents it creates.", enum=REASONS),
        "nodeCondition": NODE_CONDITION,
        "taint": TAINT,
        "cordon": boolean("Fires while the node is cordoned (spec.unschedulable)."),
        "sensor": SENSOR,
        "prometheus": PROMETHEUS_QUERY,
        "for": duration("How long the trigger must hold before the rule fires.", default="0s"),
        "cooldown": duration(
            "After firing for a node, the rule does not fire for it again within this time.",
            default="10m",
        ),
        "scope": string(
            "Node saves the partitions on the affected node; Cluster saves every partition.",
            enum=["Node", "Cluster"],
            default="Node",
        ),
        "deadline": duration("The deadline of the SaveEvents it creates.", default="5m"),
    },
    required=("name", "reason"),
    rules=(
        Rule(
            "[has(self.nodeCondition), has(self.taint), has(self.cordon) && self.cordon,"
            " has(self.sensor), has(self.prometheus)].exists_one(x, x)",
            "set exactly one trigger: nodeCondition, taint, cordon=true, sensor or prometheus",
        ),
        Rule(
            "self.reason != 'Manual'",
            "reason Manual is for SaveEvents people create; pick the reason this rule detects",
            field_path=".reason",
        ),
    ),
)

PROMETHEUS = obj(
    "The Prometheus server that prometheus rules query.",
    {
        "url": string(
            "Base URL of the Prometheus HTTP API.",
            pattern=r"^https?://[^\s]+$",
            max_length=2048,
        ),
        "interval": duration("How often the queries run.", default="30s"),
        "timeout": duration("Timeout of one query.", default="10s"),
    },
    required=("url",),
)

SPEC = obj(
    "Rules over node state that fire SaveEvents.",
    {
        "nodeSelector": label_selector("Only nodes with matching labels; all nodes if omitted."),
        "prometheus": PROMETHEUS,
        "rules": array(
            "The rules, evaluated independently.",
            TRIGGER_RULE,
            min_items=1,
            max_items=64,
            map_keys=["name"],
        ),
    },
    required=("rules",),
    rules=(
        Rule(
            "!self.rules.exists(r, has(r.prometheus)) || has(self.prometheus)",
            "spec.prometheus.url is required when a rule uses a prometheus query",
            field_path=".prometheus",
        ),
    ),
)

RULE_STATE = obj(
    "The rule's state for one node (or `*` for a cluster-wide query result).",
    {
        "node": string("The node, or `*`."),
        "pendingSince": timestamp("When the trigger started holding; cleared when it stops."),
        "lastFiredTime": timestamp("When the rule last fired for this node."),
        "saveEvent": string("namespace/name of the SaveEvent it last created."),
    },
    required=("node",),
)

STATUS = obj(
    "Evaluation state; persisted so `for` and cooldown survive an operator restart.",
    {
        "observedGeneration": observed_generation(),
        "conditions": conditions(
            "Ready (the rules are evaluated; False when a Prometheus query fails)."
        ),
        "lastFiredTime": timestamp("When any rule last fired."),
        "lastSaveEvent": string("namespace/name of the SaveEvent created last."),
        "rules": array(
            "Per-rule state.",
            obj(
                "One rule's state.",
                {
                    "name": string("The rule."),
                    "nodes": array(
                        "Per-node state.", RULE_STATE, max_items=5000, map_keys=["node"]
                    ),
                },
                required=("name",),
            ),
            max_items=64,
            map_keys=["name"],
        ),
    },
)

CONDITION_PROFILE = CustomResource(
    kind="ConditionProfile",
    plural="conditionprofiles",
    scope="Cluster",
    short_names=("cprof",),
    description="A system condition profile: when node conditions, taints, cordon, sensor "
    "readings or a Prometheus query leave acceptable bounds, partitions save their data.",
    spec=SPEC,
    status=STATUS,
    columns=(
        condition_column("Ready", "Ready", "Rules are evaluated."),
        PrinterColumn("Last Fired", "date", ".status.lastFiredTime", "When a rule last fired."),
        PrinterColumn(
            "Last SaveEvent", "string", ".status.lastSaveEvent", "The SaveEvent created last."
        ),
        AGE_COLUMN,
    ),
)
