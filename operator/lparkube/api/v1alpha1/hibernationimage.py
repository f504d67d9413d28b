"""HibernationImage: a partition's memory state on its paging LU and its captured adapters."""

from lparkube.api.resource import AGE_COLUMN, CustomResource, PrinterColumn, condition_column
from lparkube.api.schema import (
    array,
    boolean,
    conditions,
    duration,
    immutable,
    integer,
    name_ref,
    obj,
    observed_generation,
    set_once,
    string,
    timestamp,
)

# Conditions.
CAPTURED = "Captured"
RESUMED = "Resumed"
READY = "Ready"

ADAPTER_TYPES = ["Disk", "Interface", "HostDevice"]
# On a VM the operator holds stopped for an image: the runStrategy it had before.
RUN_STRATEGY_ANNOTATION = "lparkube.io/run-strategy-before-hibernation"

SPEC = obj(
    "Which partition to hibernate, from which pool, and whether to resume it.",
    {
        "partitionName": immutable(
            name_ref("The Partition (in this namespace) to hibernate."),
            "spec.partitionName",
        ),
        "viosClusterName": name_ref(
            "The VIOSCluster whose LU holds the image; the Partition's spec.viosClusterName "
            "when omitted. Immutable, set or not."
        ),
        "saveFirst": boolean(
            "Save the partition's applications (a SaveEvent with reason Other) before suspending.",
            default=True,
        ),
        "deadline": duration("The time allowed for the whole capture.", default="10m"),
        "retainAfterResume": boolean(
            "Keep the image (and its LU claimed) after a successful resume.", default=False
        ),
        "resume": boolean(
            "Resume the partition from this image (what `kubectl lparkube resume` sets): the "
            "VM starts again if its adapter configuration still matches the captured one.",
            default=False,
        ),
    },
    required=("partitionName",),
    rules=(set_once("viosClusterName", "spec.viosClusterName"),),
)

LU = obj(
    "The logical unit the image was written to (the partition's paging LU).",
    {
        "claimName": string("The LU's PersistentVolumeClaim."),
        "requestedBytes": integer("The LU's storage request.", minimum=0),
        "usedBytes": integer("Bytes of the image written to the LU.", minimum=0),
    },
)

ADAPTER = obj(
    "One I/O adapter of the VM as captured; its id stays stable across moves.",
    {
        "id": string("A stable identifier of the adapter.", min_length=1, max_length=253),
        "type": string("What the adapter is.", enum=ADAPTER_TYPES),
        "name": string("The adapter's name in the VirtualMachine (disk, interface, device)."),
        "source": obj(
            "What backs the adapter.",
            {
                "claimName": string("A disk's PersistentVolumeClaim."),
                "volume": string(
                    "A disk's other volume source, as kind/name (containerDisk/IMAGE, "
                    "secret/NAME, cloudInitNoCloud, ...)."
                ),
                "network": string("An interface's network (pod or multus/NAME)."),
                "resource": string("A host device's resource name."),
            },
        ),
        "bus": string("A disk's bus (virtio, sata, scsi; cdrom/BUS or lun/BUS for those)."),
        "serial": string("A disk's serial number, as the guest sees it."),
        "bootOrder": integer("A disk's boot order (0: none).", minimum=0),
        "macAddress": string("An interface's MAC address."),
        "model": string("An interface's model (virtio, e1000, ...)."),
        "clientNamespace": string("The namespace (tenant) the adapter belongs to."),
    },
    required=("id", "type"),
)

MACHINE = obj(
    "What a restore needs identical besides the adapters, each as KubeVirt's spec has it.",
    {
        "machineType": string("spec.domain.machine.type."),
        "firmware": string("spec.domain.firmware (bootloader, kernel boot, ...), as JSON."),
        "memory": string("The guest memory (spec.domain.memory.guest or the request)."),
        "cpu": string("The CPU topology and count, as JSON."),
    },
)

PROGRESS = obj(
    "How far the capture is.",
    {
        "step": string("The step running now."),
        "completedSteps": integer("Steps done.", minimum=0),
        "totalSteps": integer("Steps in all.", minimum=0),
        "bytesWritten": integer("Bytes of the image written so far.", minimum=0),
    },
)

STATUS = obj(
    "The captured image and the state of its capture and resume.",
    {
        "observedGeneration": observed_generation(),
        "conditions": conditions(
            "Captured (the image is complete and consistent), Resumed (the partition resumed "
            "from it), Ready."
        ),
        "lu": LU,
        "memoryBytes": integer("The guest's memory size when captured.", minimum=0),
        "sourceNodeName": string("The node the partition ran on when captured."),
        "capturedTime": timestamp("When the image was complete."),
        "kernelRelease": string("The guest kernel release (uname -r) that wrote the image."),
        "bootId": string(
            "The guest's boot id when it hibernated; a resumed guest reports the same one, a "
            "new boot another."
        ),
        "runStrategy": string(
            "The VM's runStrategy before the operator halted it; restored on resume."
        ),
        "adapters": array(
            "The VM's I/O adapters as captured.", ADAPTER, max_items=256, map_keys=["id"]
        ),
        "machine": MACHINE,
        "progress": PROGRESS,
        "saveEvent": string("The SaveEvent run before suspending."),
        "requestedTime": timestamp("When the agent took the hibernate instruction."),
        "imageBytes": integer(
            "The image's size as the guest's kernel copied it (reported after resume).", minimum=0
        ),
        "resumeStartedTime": timestamp("When the operator started the VM to resume it."),
        "resumedTime": timestamp("When the resume ended (Resumed True or False)."),
    },
)

HIBERNATION_IMAGE = CustomResource(
    kind="HibernationImage",
    plural="hibernationimages",
    scope="Namespaced",
    short_names=("hib",),
    description="A partition's hibernation data: its memory written to its paging LU by an "
    "in-guest suspend-to-disk, with the VM's I/O adapter configuration captured alongside.",
    spec=SPEC,
    status=STATUS,
    columns=(
        PrinterColumn("Partition", "string", ".spec.partitionName", "The Partition."),
        condition_column("Captured", CAPTURED, "The image is complete."),
        PrinterColumn("Size", "integer", ".status.lu.usedBytes", "Bytes of the image."),
        PrinterColumn("Node", "string", ".status.sourceNodeName", "Where it was captured."),
        AGE_COLUMN,
    ),
)
