"""SaveEvent: one request to save unsaved application data in a set of partitions."""

from lparkube.api.resource import AGE_COLUMN, CustomResource, PrinterColumn, condition_column
from lparkube.api.schema import (
    DNS_LABEL_PATTERN,
    Rule,
    array,
    boolean,
    conditions,
    duration,
    integer,
    label_selector,
    name_ref,
    obj,
    observed_generation,
    string,
    timestamp,
)

REASONS = ["Thermal", "Power", "Migration", "Backup", "Manual", "Other"]
SAVE_METHODS = ["Signal", "Command", "HTTP", "UnixSocket", "SimulatedInput"]
PARTITION_OUTCOMES = ["Pending", "Instructed", "Succeeded", "Failed", "TimedOut", "Unreachable"]
SAVE_OUTCOMES = ["Saved", "Failed", "TimedOut", "Skipped"]

TARGETS = obj(
    "Which partitions save. Set exactly one of partitions, selector, nodeName and all.",
    {
        "partitions": array(
            "Partition names in this namespace.",
            name_ref("A Partition name."),
            max_items=1000,
            min_items=1,
            set_list=True,
        ),
        "selector": label_selector("Partitions in this namespace whose labels match."),
        "nodeName": name_ref("Every partition whose VM runs on this node."),
        "all": boolean("Every partition in this namespace."),
        "allNamespaces": boolean(
            "Widen the target to every namespace. Honoured only for SaveEvents in the "
            "operator's system namespace, where cluster-wide triggers create them; elsewhere "
            "the SaveEvent is refused, so one tenant cannot reach another's partitions."
        ),
    },
    rules=(
        Rule(
            "[has(self.partitions), has(self.selector), has(self.nodeName),"
            " has(self.all) && self.all].exists_one(x, x)",
            "set exactly one of targets.partitions, targets.selector, targets.nodeName or "
            "targets.all=true",
        ),
    ),
)

TRIGGER = obj(
    "What created this SaveEvent; the operator sets it for automatic triggers.",
    {
        "type": string("The kind of trigger.", enum=["Manual", "ConditionProfile", "Evacuation"]),
        "profile": string("The ConditionProfile whose rule fired."),
        "rule": string("The rule that fired."),
        "nodeName": string("The node the trigger concerns."),
    },
    required=("type",),
)

SPEC = obj(
    "A request to save unsaved data. The whole spec is fixed at creation, like a Job's.",
    {
        "reason": string("Why the data must be saved.", enum=REASONS),
        "message": string("A human explanation, shown in events.", max_length=1024),
        "targets": TARGETS,
        "deadline": duration(
            "How long after creation the SaveEvent may take; partitions still unfinished then "
            "are recorded as TimedOut. At most 24h.",
            default="5m",
        ),
        "applicationTimeout": duration(
            "How long one application may take to save before it is reported TimedOut and the "
            "next priority group starts. Must not exceed deadline.",
            default="30s",
        ),
        "podSaveHooks": boolean(
            "Also call pods on the affected nodes that declare a save hook with the "
            "lparkube.io/save-hook annotation (the 'hypervisor processes').",
            default=True,
        ),
        "snapshotAfterSave": boolean(
            "Take an application-consistent VirtualMachineSnapshot of each partition once its "
            "applications saved. Only with reason Backup.",
            default=False,
        ),
        "trigger": TRIGGER,
    },
    required=("reason", "targets"),
    rules=(
        Rule("self == oldSelf", "spec is immutable: create a new SaveEvent instead"),
        Rule(
            "!self.snapshotAfterSave || self.reason == 'Backup'",
            "snapshotAfterSave requires reason Backup",
            field_path=".snapshotAfterSave",
        ),
        Rule(
            "duration(self.applicationTimeout) <= duration(self.deadline)",
            "applicationTimeout must not exceed deadline",
            field_path=".applicationTimeout",
        ),
        Rule(
            "duration(self.deadline) <= duration('24h') && duration(self.deadline) > "
            "duration('0s')",
            "deadline must be more than 0s and at most 24h",
            field_path=".deadline",
        ),
    ),
)

APPLICATION_RESULT = obj(
    "How one registered application saved.",
    {
        "name": string("The name the application registered with."),
        "pid": integer("Its process id in the guest.", minimum=0),
        "priority": integer("Its priority; lower numbers save first.", fmt="int32"),
        "order": integer("Its priority group's position, starting at 1.", minimum=1),
        "method": string("How it was told to save.", enum=SAVE_METHODS),
        "outcome": string("What happened.", enum=SAVE_OUTCOMES),
        "durationMillis": integer("How long the save took.", minimum=0),
        "message": string("Details, such as an error.", max_length=1024),
    },
    required=("name", "outcome"),
)

PARTITION_RESULT = obj(
    "The outcome in one partition.",
    {
        "namespace": string("The Partition's namespace.", pattern=DNS_LABEL_PATTERN),
        "name": string("The Partition's name."),
        "nodeName": string("The node its VM ran on."),
        "outcome": string("Where this partition stands.", enum=PARTITION_OUTCOMES),
        "instructedTime": timestamp("When its agent accepted the save instruction."),
        "completionTime": timestamp("When its agent reported the last result."),
        "message": string("Details, such as why the agent was unreachable.", max_length=1024),
        "applications": array(
            "Per-application results in the order they ran. In large events, the ones that "
            "saved (and then all) are folded into omittedApplications to keep the object small.",
            APPLICATION_RESULT,
            max_items=128,
        ),
        "omittedApplications": obj(
            "How many applications, by outcome, are counted here instead of listed.",
            {o: integer(f"Applications that ended {o}.", minimum=0) for o in SAVE_OUTCOMES},
        ),
    },
    required=("namespace", "name", "outcome"),
)

POD_RESULT = obj(
    "The outcome of one pod's save hook.",
    {
        "namespace": string("The pod's namespace."),
        "name": string("The pod's name."),
        "nodeName": string("The node it runs on."),
        "outcome": string("What happened.", enum=SAVE_OUTCOMES),
        "durationMillis": integer("How long the hook took.", minimum=0),
        "message": string("Details.", max_length=1024),
    },
    required=("namespace", "name", "outcome"),
)

SUMMARY = obj(
    "Counts over all targets.",
    {
        key: integer(text, minimum=0)
        for key, text in {
            "partitions": "Target partitions.",
            "pending": "Partitions not finished yet.",
            "succeeded": "Partitions whose applications all saved.",
            "failed": "Partitions that failed, timed out or were unreachable.",
            "applications": "Applications instructed.",
            "applicationsSaved": "Applications that saved.",
            "applicationsFailed": "Applications that failed or timed out.",
        }.items()
    },
)

STATUS = obj(
    "Progress and results, per partition and per application.",
    {
        "observedGeneration": observed_generation(),
        "conditions": conditions(
            "Complete (no work left; reason Succeeded, PartiallySucceeded, Failed, "
            "DeadlineExceeded, NoTargets (no Partition matched) or Refused) and Succeeded "
            "(every target saved; True for NoTargets, False for Refused)."
        ),
        "startTime": timestamp("When the operator started instructing partitions."),
        "deadlineTime": timestamp("creationTimestamp + spec.deadline."),
        "completionTime": timestamp("When the last result arrived or the deadline passed."),
        "summary": SUMMARY,
        "partitions": array(
            "Results per partition (at most 1500 targets per SaveEvent).",
            PARTITION_RESULT,
            max_items=1500,
        ),  # atomic, not a map list: one writer, and per-entry managedFields would double it
        "pods": array(
            "Results per pod save hook.", POD_RESULT, max_items=1000, map_keys=["namespace", "name"]
        ),
        "snapshots": array(
            "VirtualMachineSnapshots taken after the save (reason Backup).",
            obj(
                "One snapshot.",
                {
                    "namespace": string("The namespace of the Partition and the snapshot."),
                    "partition": string("The Partition."),
                    "name": string("The VirtualMachineSnapshot."),
                    "readyToUse": boolean("Whether KubeVirt reports it ready."),
                },
                required=("namespace", "partition", "name"),
            ),
            max_items=1500,
            map_keys=["namespace", "partition"],
        ),
    },
)

SAVE_EVENT = CustomResource(
    kind="SaveEvent",
    plural="saveevents",
    scope="Namespaced",
    short_names=("se",),
    description="A predefined event that tells every registered application in the target "
    "partitions to save its unsaved data, in priority order, and records each result.",
    spec=SPEC,
    status=STATUS,
    columns=(
        PrinterColumn("Reason", "string", ".spec.reason", "Why data is saved."),
        PrinterColumn("Partitions", "integer", ".status.summary.partitions", "Targets."),
        PrinterColumn("Saved", "integer", ".status.summary.succeeded", "Partitions saved."),
        PrinterColumn("Failed", "integer", ".status.summary.failed", "Partitions failed."),
        condition_column("Complete", "Complete", "No work left."),
        PrinterColumn("Deadline", "string", ".spec.deadline", "Time allowed.", priority=1),
        PrinterColumn("Message", "string", ".spec.message", "Explanation.", priority=1),
        AGE_COLUMN,
    ),
)
