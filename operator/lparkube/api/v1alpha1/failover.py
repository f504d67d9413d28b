"""Partition.spec.failover and status.failover (seed 002): restart a failed partition on
another node from its newest consistency image, escalating to a clean boot image; fence the
old instance first, by its node, its disappearance, or its own watchdog (docs/api.md,
"Failover")."""

from lparkube.api.schema import (
    DURATION_PATTERN,
    Rule,
    array,
    boolean,
    duration,
    integer,
    name_ref,
    obj,
    string,
    string_map,
    timestamp,
)

# Condition FailedOver and its reasons.
FAILED_OVER = "FailedOver"
FAILING_OVER = "FailingOver"  # False: a failover is under way
WAITING_FOR_FENCE = "WaitingForFence"  # False: the old instance may still run
REPEATED_FAILURES = "RepeatedFailures"  # False: failed again and again; left stopped
FAILOVER_FAILED = "FailoverFailed"  # False: the restart failed (the cause named)
CONSISTENCY_IMAGE = "Consistency"  # lastImage; True reason FromConsistencyImage
BOOT_IMAGE = "Boot"  # lastImage; True reason FromBootImage
FROM_CONSISTENCY_IMAGE = "FromConsistencyImage"
FROM_BOOT_IMAGE = "FromBootImage"
IMAGES = (CONSISTENCY_IMAGE, BOOT_IMAGE)

# Failures (status.failover.current.reason, the FailureDetected event).
VMI_FAILED = "VMIFailed"
GUEST_PANICKED = "GuestPanicked"
NODE_LOST = "NodeLost"
AGENT_LOST = "AgentLost"
FAILURES = (VMI_FAILED, GUEST_PANICKED, NODE_LOST, AGENT_LOST)

# How the old instance was proven unable to run (current.fence.by).
NODE_FENCED = "NodeFenced"
INSTANCE_GONE = "InstanceGone"
SELF_FENCED = "SelfFenced"
FENCES = (NODE_FENCED, INSTANCE_GONE, SELF_FENCED)

# Phases of one failover (current.phase), in order; Stopped ends one that will not restart.
DETECTED = "Detected"
FENCING = "Fencing"
RESTORING = "Restoring"
RESTARTING = "Restarting"
RECONNECTING = "Reconnecting"
DONE = "Done"
STOPPED = "Stopped"
PHASES = (DETECTED, FENCING, RESTORING, RESTARTING, RECONNECTING, DONE, STOPPED)

# Consistency of a snapshot: Application (KubeVirt's GuestAgent indication: the file systems
# were frozen) or Crash (taken without a guest agent: only what a power cut would leave).
APPLICATION_CONSISTENT = "Application"
CRASH_CONSISTENT = "Crash"

# Events (on the Partition).
FAILURE_DETECTED_EVENT = "FailureDetected"  # Warning
FAILOVER_STARTED_EVENT = "FailoverStarted"  # Normal
FAILED_OVER_EVENT = "FailedOver"  # Normal
FAILOVER_STOPPED_EVENT = "FailoverStopped"  # Warning: repeated failures, or a failed restart
CONSISTENCY_IMAGE_TAKEN_EVENT = "ConsistencyImageTaken"  # Normal
CONSISTENCY_IMAGE_SKIPPED_EVENT = "ConsistencyImageSkipped"  # Warning: the save failed

# Labels on what failover creates (SaveEvents, VirtualMachineSnapshots, restores, restarts).
PURPOSE_LABEL = "lparkube.io/failover"  # consistency-image | restore | restart
# Failover owns a running VM's restarts: its runStrategy Always or RerunOnFailure becomes Manual
# (KubeVirt would restart a failed VMI at once, from the same disk), the one it had recorded here
# and given back when failover is turned off.
RUN_STRATEGY_ANNOTATION = "lparkube.io/failover-run-strategy"
CONSISTENCY_IMAGE_PURPOSE = "consistency-image"
WATCHDOG_DEVICE = "lparkube-watchdog"  # the VM's watchdog device the operator adds
FENCE_MARGIN_SECONDS = 5.0  # on top of lease + watchdog timeout (clock rate, timer slack)
MAX_HISTORY = 10
MAX_IMAGES = 10

_DURATION_HELP = "a duration such as 30s, 5m or 1h30m"


def _at_least(path: str, minimum: str) -> Rule:
    """A duration field no shorter than `minimum` (a malformed one is the pattern's error)."""
    return Rule(
        f"!self.matches(r'{DURATION_PATTERN}') || duration(self) >= duration('{minimum}')",
        f"{path} must be at least {minimum}",
    )


def _bounded(path: str, minimum: str, maximum: str) -> Rule:
    return Rule(
        f"!self.matches(r'{DURATION_PATTERN}') || "
        f"(duration(self) >= duration('{minimum}') && duration(self) <= duration('{maximum}'))",
        f"{path} must be between {minimum} and {maximum}",
    )


def _duration(description: str, default: str, *rules: Rule) -> dict:
    node = duration(f"{description} ({_DURATION_HELP}).", default=default)
    node["x-kubernetes-validations"] = [r.render() for r in rules]
    return node


BOOT_IMAGE_SOURCE = obj(
    "The clean boot disk a second failure within escalationWindow restarts from: it replaces "
    "the VM's boot disk (the disk with the lowest bootOrder, else the first). Exactly one of "
    "pvcName, dataVolumeTemplate and containerDisk.",
    {
        "pvcName": name_ref("A PersistentVolumeClaim of this namespace holding the boot disk."),
        "dataVolumeTemplate": obj(
            "A CDI DataVolume template (metadata.name is chosen by the operator): a fresh "
            "disk made from it at each escalation.",
            preserve_unknown=True,
        ),
        "containerDisk": obj(
            "A KubeVirt containerDisk: an ephemeral disk from a container image.",
            {"image": string("The container image.", min_length=1, max_length=512)},
            required=("image",),
        ),
    },
    rules=(
        Rule(
            "[has(self.pvcName), has(self.dataVolumeTemplate), has(self.containerDisk)]"
            ".filter(x, x).size() == 1",
            "set exactly one of spec.failover.bootImage.pvcName, .dataVolumeTemplate or "
            ".containerDisk",
        ),
    ),
)

SELF_FENCE = obj(
    "The guest's own fence: the operator grants the guest agent a lease with every heartbeat "
    "answer, and the agent pets the VM's i6300esb watchdog (action poweroff, added to a VM "
    "the Partition creates) only while it holds one. A guest cut off from the operator is "
    "thus powered off by its hypervisor within lease + watchdogTimeout, and the operator "
    "restarts it elsewhere once that time and a 5s margin have passed since the last lease "
    "it granted, without waiting for the node to be fenced. The guest powers itself off "
    "when it cannot reach the operator for that long, also when the operator is down.",
    {
        "enabled": boolean("Grant leases and count on the watchdog.", default=True),
        "lease": _duration(
            "How long a lease granted with a heartbeat answer lasts; the agent renews it at a "
            "third of this",
            "10s",
            _bounded("spec.failover.selfFence.lease", "3s", "5m"),
        ),
        "watchdogTimeout": _duration(
            "The watchdog timeout the agent sets: how long after its last pet the hypervisor "
            "powers the guest off",
            "10s",
            _bounded("spec.failover.selfFence.watchdogTimeout", "2s", "30m"),
        ),
    },
)

SPEC = obj(
    "Restart this partition on another node when it fails (seed 002): from its newest "
    "consistency image, and from bootImage when it fails again within escalationWindow.",
    {
        "enabled": boolean("Fail over on failure.", default=False),
        "consistencyImage": obj(
            "The application-consistent images: a SaveEvent, then a VirtualMachineSnapshot.",
            {
                "interval": _duration(
                    "How often a consistency image is taken",
                    "1h",
                    _at_least("spec.failover.consistencyImage.interval", "1m"),
                ),
                "keep": integer(
                    "How many images are kept; older ones are deleted.",
                    minimum=1,
                    maximum=MAX_IMAGES,
                    default=3,
                ),
            },
        ),
        "bootImage": BOOT_IMAGE_SOURCE,
        "escalationWindow": _duration(
            "A failure within this time of the previous one restarts from bootImage; a third "
            "one stops the partition (FailedOver=False, RepeatedFailures)",
            "15m",
            _at_least("spec.failover.escalationWindow", "1m"),
        ),
        "nodeSelector": string_map("Labels a node must have to receive a failover restart."),
        "selfFence": SELF_FENCE,
    },
    rules=(
        Rule(
            "!self.enabled || has(self.bootImage)",
            "spec.failover.enabled needs spec.failover.bootImage: the clean boot disk a "
            "second failure restarts from",
            field_path=".bootImage",
        ),
    ),
)

WATCHDOG_STATUS = obj(
    "The guest's watchdog as its agent last reported it.",
    {
        "device": string("The watchdog device in the guest.", max_length=256),
        "timeoutSeconds": integer("The timeout the device runs with.", minimum=0),
        "armed": boolean("The agent opened the device and pets it while it holds a lease."),
        "message": string("Why it is not armed, or empty.", max_length=1024),
    },
)

_FENCE = obj(
    "How the old instance was proven unable to run.",
    {
        "by": string("NodeFenced, InstanceGone or SelfFenced.", enum=list(FENCES)),
        "at": timestamp("When the proof held (SelfFenced: lease + watchdog + margin)."),
        "message": string("What was seen.", max_length=1024),
    },
)

_FAILURE_FIELDS = {
    "id": string("The failure's id: every object it creates is named after it.", max_length=64),
    "reason": string("What failed.", enum=list(FAILURES)),
    "message": string("What was observed.", max_length=1024),
    "detectedAt": timestamp("When the operator recorded the failure."),
    "image": string("The image it restarts from: Consistency or Boot.", enum=list(IMAGES)),
    "imageReason": string("Why that image.", max_length=1024),
}

CURRENT = obj(
    "The failover under way, or the last one.",
    {
        **_FAILURE_FIELDS,
        "phase": string("Where it is.", enum=list(PHASES)),
        "fence": _FENCE,
        "snapshotName": string("The VirtualMachineSnapshot restored.", max_length=253),
        "restoreName": string("The VirtualMachineRestore it made.", max_length=253),
        "restartName": string("The RemoteRestart it made.", max_length=253),
        "bootId": string("The guest's boot id before the failure.", max_length=64),
        "nodeName": string("The node the failed instance ran on.", max_length=253),
        "instanceUid": string("The failed VMI's uid.", max_length=64),
        "instanceWatchdog": boolean(
            "The failed instance ran with the self-fence watchdog (i6300esb, poweroff)."
        ),
        "runStrategy": string(
            "The VM's runStrategy before the failover held it Halted; given back after the "
            "restart.",
            max_length=32,
        ),
        "completedAt": timestamp("When it was Done or Stopped."),
    },
)

HISTORY_ENTRY = obj(
    "One past failure.",
    {
        **_FAILURE_FIELDS,
        "result": string("Done or Stopped.", enum=[DONE, STOPPED]),
        "completedAt": timestamp("When it ended."),
    },
)

CONSISTENCY_IMAGE_ENTRY = obj(
    "A consistency image: a VirtualMachineSnapshot taken after a successful save.",
    {
        "name": string("The VirtualMachineSnapshot.", max_length=253),
        "time": timestamp("When the snapshot was ready."),
        "consistency": string(
            "Application (the guest agent froze the file systems) or Crash (no guest agent).",
            enum=[APPLICATION_CONSISTENT, CRASH_CONSISTENT],
        ),
        "saveEvent": string("The SaveEvent that saved the applications first.", max_length=253),
    },
)

PENDING_IMAGE = obj(
    "The consistency image under way, recorded before its SaveEvent and snapshot are made: "
    "an operator restarted goes on with these names instead of taking a second image.",
    {
        "saveEvent": string("The SaveEvent that saves the applications first.", max_length=253),
        "snapshotName": string(
            "The VirtualMachineSnapshot taken once the save succeeded.", max_length=253
        ),
        "startedAt": timestamp("When the image was begun."),
    },
)

STATUS = obj(
    "Failover state: the failures, the images, the escalation.",
    {
        "failures": integer("Failures recorded since the Partition was created.", minimum=0),
        "lastFailureTime": timestamp("When the last failure was recorded."),
        "lastImage": string("The image the last failover used.", enum=list(IMAGES)),
        "consistencyImages": array(
            "The consistency images kept, oldest first.",
            CONSISTENCY_IMAGE_ENTRY,
            max_items=MAX_IMAGES,
        ),
        "nextConsistencyImageTime": timestamp("When the next consistency image is due."),
        "pendingImage": PENDING_IMAGE,
        "leaseExpiry": timestamp(
            "When the latest lease the operator granted the guest agent runs out (operator "
            "clock); written before the answer that carries the lease."
        ),
        "current": CURRENT,
        "history": array("The last failovers, newest last.", HISTORY_ENTRY, max_items=MAX_HISTORY),
    },
)
