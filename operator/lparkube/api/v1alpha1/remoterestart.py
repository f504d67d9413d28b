"""RemoteRestart: a token-carrying operation that restarts a partition on another node, from
its HibernationImage or from disk, and never runs it twice (docs/api.md, "RemoteRestart")."""

from lparkube.api.resource import AGE_COLUMN, CustomResource, PrinterColumn
from lparkube.api.schema import (
    DURATION_PATTERN,
    Rule,
    array,
    conditions,
    immutable,
    integer,
    name_ref,
    obj,
    observed_generation,
    set_once,
    string,
    string_map,
    timestamp,
)

KIND = "RemoteRestart"
PLURAL = "remoterestarts"

# Steps (RemoteRestartStep), in order; RestoringMemory (with an image) or Booting (without).
VALIDATING = "Validating"
LOCKING_ADAPTERS = "LockingAdapters"
GATHERING_CONFIGURATION = "GatheringConfiguration"
CONFIGURING_TARGET_ADAPTERS = "ConfiguringTargetAdapters"
CHECKING_ADAPTERS = "CheckingAdapters"
RESTORING_MEMORY = "RestoringMemory"
BOOTING = "Booting"
VERIFYING = "Verifying"
UNLOCKING = "Unlocking"
STEPS = (
    VALIDATING,
    LOCKING_ADAPTERS,
    GATHERING_CONFIGURATION,
    CONFIGURING_TARGET_ADAPTERS,
    CHECKING_ADAPTERS,
    RESTORING_MEMORY,
    BOOTING,
    VERIFYING,
    UNLOCKING,
)
# Step statuses.
PENDING, RUNNING, DONE, FAILED, SKIPPED = "Pending", "Running", "Done", "Failed", "Skipped"
STEP_STATUSES = (PENDING, RUNNING, DONE, FAILED, SKIPPED)

# Conditions.
LOCKED = "Locked"
ADAPTERS_CONFIGURED = "AdaptersConfigured"
RESTORED = "Restored"
COMPLETE = "Complete"

# Termination: state and code; Complete's reasons.
RESTART_SUCCEEDED = "RestartSucceeded"
RESTART_FAILED = "RestartFailed"
TERMINATION_CODES = {RESTART_SUCCEEDED: 0, RESTART_FAILED: 1}
IN_PROGRESS = "InProgress"

# Failure and waiting reasons (Complete=False, Locked=False, the RestartFailed event).
PARTITION_NOT_FOUND = "PartitionNotFound"
VM_NOT_FOUND = "VMNotFound"
ANOTHER_RESTART_IN_PROGRESS = "AnotherRestartInProgress"
TARGET_NOT_FOUND = "TargetNotFound"
TARGET_NOT_READY = "TargetNotReady"
TARGET_NOT_VIOS_NODE = "TargetNotVIOSNode"
TARGET_IS_SOURCE = "TargetIsSource"
NODE_SELECTOR_MISMATCH = "NodeSelectorMismatch"
AFFINITY_MISMATCH = "AffinityMismatch"
TAINT_NOT_TOLERATED = "TaintNotTolerated"
TARGET_SELECTOR_MISMATCH = "TargetSelectorMismatch"
INSUFFICIENT_MEMORY = "InsufficientMemory"
INSUFFICIENT_CPU = "InsufficientCPU"
CLAIM_NOT_REACHABLE = "ClaimNotReachable"
NETWORK_NOT_FOUND = "NetworkNotFound"
NO_TARGET_NODE = "NoTargetNode"
IMAGE_NOT_FOUND = "ImageNotFound"
IMAGE_NOT_CAPTURED = "ImageNotCaptured"
IMAGE_OF_ANOTHER_PARTITION = "ImageOfAnotherPartition"
IMAGE_ADAPTERS_DO_NOT_FIT = "ImageAdaptersDoNotFit"
ADAPTER_LOCKED = "AdapterLocked"
WAITING_FOR_SOURCE_STOP = "WaitingForSourceStop"
SOURCE_NOT_STOPPED = "SourceNotStopped"
WAITING_FOR_VOLUME_RELEASE = "WaitingForVolumeRelease"
TARGET_START_FAILED = "TargetStartFailed"
RESUME_FAILED = "ResumeFailed"
BOOT_ID_CHANGED = "BootIdChanged"
AGENT_NOT_CONNECTED = "AgentNotConnected"
DEADLINE_EXCEEDED = "DeadlineExceeded"
STOPPED_BY_USER = "StoppedByUser"
FAILURE_REASONS = (
    PARTITION_NOT_FOUND,
    VM_NOT_FOUND,
    ANOTHER_RESTART_IN_PROGRESS,
    TARGET_NOT_FOUND,
    TARGET_NOT_READY,
    TARGET_NOT_VIOS_NODE,
    TARGET_IS_SOURCE,
    NODE_SELECTOR_MISMATCH,
    AFFINITY_MISMATCH,
    TAINT_NOT_TOLERATED,
    TARGET_SELECTOR_MISMATCH,
    INSUFFICIENT_MEMORY,
    INSUFFICIENT_CPU,
    CLAIM_NOT_REACHABLE,
    NETWORK_NOT_FOUND,
    NO_TARGET_NODE,
    IMAGE_NOT_FOUND,
    IMAGE_NOT_CAPTURED,
    IMAGE_OF_ANOTHER_PARTITION,
    IMAGE_ADAPTERS_DO_NOT_FIT,
    ADAPTER_LOCKED,
    WAITING_FOR_SOURCE_STOP,
    SOURCE_NOT_STOPPED,
    WAITING_FOR_VOLUME_RELEASE,
    TARGET_START_FAILED,
    RESUME_FAILED,
    BOOT_ID_CHANGED,
    AGENT_NOT_CONNECTED,
    DEADLINE_EXCEEDED,
    STOPPED_BY_USER,
)

# Events, on the RemoteRestart and the same on its Partition.
RESTART_STARTED_EVENT = "RestartStarted"  # Normal
WAITING_FOR_SOURCE_STOP_EVENT = WAITING_FOR_SOURCE_STOP  # Warning, once
TARGET_CONFIGURED_EVENT = "TargetConfigured"  # Normal
RESTART_SUCCEEDED_EVENT = RESTART_SUCCEEDED  # Normal
RESTART_FAILED_EVENT = RESTART_FAILED  # Warning, the message names the cause

# On every object the operation creates or marks (its Leases, the VM while held): the token.
OPERATION_TOKEN_LABEL = "lparkube.io/operation-token"
# On the VM while held: JSON {"token", "runStrategy", "nodeSelector"} (what it had before).
HOLD_ANNOTATION = "lparkube.io/restart-hold"
# A node with this taint is fenced: what ran there cannot run any more.
OUT_OF_SERVICE_TAINT = "node.kubernetes.io/out-of-service"
FENCE_TAINT_TEXT = f"{OUT_OF_SERVICE_TAINT}=nodeshutdown:NoExecute"
HOSTNAME_LABEL = "kubernetes.io/hostname"
# Adapter lock Leases: rr-<partition>-<source|target>-<adapter id, / as ->.
LEASE_PREFIX = "rr-"
SOURCE, TARGET = "Source", "Target"
# Adapter states in status.adapters[].
ADAPTER_LOCKED_STATE = "Locked"
ADAPTER_CONFIGURED = "Configured"
ADAPTER_VERIFIED = "Verified"
ADAPTER_RELEASED = "Released"
ADAPTER_STATES = (ADAPTER_LOCKED_STATE, ADAPTER_CONFIGURED, ADAPTER_VERIFIED, ADAPTER_RELEASED)
# spec.stop: an orchestrator ends the operation with this termination state.
STOP_SUCCEEDED, STOP_FAILED = "Succeeded", "Failed"
DEFAULT_DEADLINE = "15m"
DEFAULT_LOCK_TIMEOUT = "5m"  # the VIOSCluster's default, when the partition has no pool

_DURATION_HELP = "a Go duration such as 30s, 5m or 1h30m"


def _duration_field(path: str, description: str, default: str | None = None) -> dict:
    """A duration whose pattern failure names the field (CEL message)."""
    node = string(description, max_length=32, default=default)
    node["x-kubernetes-validations"] = [
        Rule(f"self.matches(r'{DURATION_PATTERN}')", f"{path} must be {_DURATION_HELP}").render()
    ]
    return node


SPEC = obj(
    "Which partition to restart, where, and from what.",
    {
        "partitionName": immutable(
            name_ref("The Partition (in this namespace) to restart."), "spec.partitionName"
        ),
        "hibernationImageName": name_ref(
            "Resume from this HibernationImage (of the same partition, Captured); boot from "
            "disk when omitted. Immutable, set or not."
        ),
        "targetNodeName": name_ref(
            "The node to restart on; the operator picks the best VIOS node that fits when omitted."
        ),
        "targetNodeSelector": string_map(
            "Labels the picked node must have (not with targetNodeName)."
        ),
        "viosClusterName": name_ref(
            "The VIOSCluster whose nodes may be targets; the Partition's when omitted."
        ),
        "lockTimeout": _duration_field(
            "spec.lockTimeout",
            "How long an adapter lock's Lease holds without renewal; the VIOSCluster's "
            "lockTimeout when omitted. An expired lock unlocks the adapter, removing nothing.",
        ),
        "deadline": _duration_field(
            "spec.deadline",
            "The time allowed for the whole operation, from creation; after it the operation "
            "ends RestartFailed.",
            default=DEFAULT_DEADLINE,
        ),
        "stop": string(
            "End the operation explicitly with this termination state (Succeeded is honoured "
            "once the target is verified); omitted: the operator ends it itself.",
            enum=[STOP_SUCCEEDED, STOP_FAILED],
        ),
    },
    required=("partitionName",),
    rules=(
        Rule(
            "!(has(self.targetNodeName) && has(self.targetNodeSelector))",
            "set at most one of spec.targetNodeName and spec.targetNodeSelector",
            field_path=".targetNodeSelector",
        ),
        set_once("hibernationImageName", "spec.hibernationImageName"),
    ),
)

STEP = obj(
    "One step of the operation.",
    {
        "name": string("The step.", enum=list(STEPS)),
        "status": string("Where the step is.", enum=list(STEP_STATUSES)),
        "startTime": timestamp("When the step started."),
        "completionTime": timestamp("When the step ended."),
        "message": string("What the step did or waits for.", max_length=4096),
    },
    required=("name", "status"),
)

LOCK = obj(
    "One adapter lock: a coordination.k8s.io Lease held by the operation token.",
    {
        "adapterId": string("The adapter (a status.adapters id)."),
        "leaseName": string("The Lease, in this namespace."),
        "side": string("Whose adapter it locks.", enum=[SOURCE, TARGET]),
        "expiresTime": timestamp("When the Lease runs out unless renewed."),
    },
    required=("adapterId", "side"),
)

ADAPTER = obj(
    "One I/O adapter of the partition, moved from the source to the target.",
    {
        "id": string("A stable identifier of the adapter.", min_length=1, max_length=253),
        "type": string("What the adapter is.", enum=["Disk", "Interface", "HostDevice"]),
        "source": string("What backs it on the source (claim, volume, network)."),
        "target": string("What backs it on the target."),
        "state": string("How far the adapter is.", enum=list(ADAPTER_STATES)),
    },
    required=("id",),
)

STATUS = obj(
    "Where the operation is: its steps, locks, adapters and termination state.",
    {
        "observedGeneration": observed_generation(),
        "conditions": conditions(
            "Locked (the adapters are locked and the source is proven stopped), "
            "AdaptersConfigured, Restored (the target runs), Complete (the termination)."
        ),
        "token": string("The operation token (metadata.uid)."),
        "step": string("The current step.", enum=list(STEPS)),
        "steps": array("Every step, in order.", STEP, max_items=16, map_keys=["name"]),
        "progress": obj(
            "How far the operation is.",
            {
                "completedSteps": integer("Steps done or skipped.", minimum=0),
                "totalSteps": integer("Steps in all.", minimum=0),
            },
        ),
        "sourceNodeName": string("The node the partition ran on."),
        "targetNodeName": string("The node it restarts on."),
        "locks": array(
            "The adapter locks held.", LOCK, max_items=512, map_keys=["adapterId", "side"]
        ),
        "adapters": array("The partition's adapters.", ADAPTER, max_items=256, map_keys=["id"]),
        "terminationState": string(
            "How the operation ended.", enum=[RESTART_SUCCEEDED, RESTART_FAILED]
        ),
        "terminationCode": integer("0: RestartSucceeded, 1: RestartFailed.", minimum=0, maximum=1),
        "startTime": timestamp("When the operator started the operation."),
        "completionTime": timestamp("When it reached its termination state."),
    },
)

REMOTE_RESTART = CustomResource(
    kind=KIND,
    plural=PLURAL,
    scope="Namespaced",
    short_names=("rr",),
    description="A remote restart of a partition on another node, from its HibernationImage "
    "or from disk: a state machine whose token (metadata.uid) is carried by every lock and "
    "object it creates, so the partition never runs twice.",
    spec=SPEC,
    status=STATUS,
    columns=(
        PrinterColumn("Partition", "string", ".spec.partitionName", "The Partition."),
        PrinterColumn("Step", "string", ".status.step", "The current step."),
        PrinterColumn("Source", "string", ".status.sourceNodeName", "Where it ran."),
        PrinterColumn("Target", "string", ".status.targetNodeName", "Where it restarts."),
        PrinterColumn("Result", "string", ".status.terminationState", "The termination state."),
        AGE_COLUMN,
    ),
)
