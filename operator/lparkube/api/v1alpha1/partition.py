"""Partition: one KubeVirt VirtualMachine that lparkube creates or adopts and protects."""

from lparkube.api.resource import AGE_COLUMN, CustomResource, PrinterColumn, condition_column
from lparkube.api.schema import (
    Rule,
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
    size,
    string,
    string_map,
    timestamp,
)
from lparkube.api.v1alpha1 import failover

VM_TEMPLATE = obj(
    "A KubeVirt VirtualMachine that the operator creates and owns, named after the Partition. "
    "Deleting the Partition deletes this VM.",
    {
        "metadata": obj(
            "Labels and annotations copied onto the VirtualMachine.",
            {
                "labels": string_map("Labels for the VirtualMachine."),
                "annotations": string_map("Annotations for the VirtualMachine."),
            },
        ),
        "spec": obj(
            "A KubeVirt VirtualMachineSpec (kubevirt.io/v1). KubeVirt validates it when the "
            "operator creates the VirtualMachine.",
            preserve_unknown=True,
        ),
    },
    required=("spec",),
)

AGENT_SPEC = obj(
    "How the operator reaches the lparkube guest agent inside the VM.",
    {
        "port": integer(
            "TCP port the guest agent serves on the VM's pod-network address.",
            minimum=1024,
            maximum=65535,
            default=8443,
            fmt="int32",
        ),
        "keySecretName": name_ref(
            "Secret (in this namespace) holding the partition key under data.key. When "
            "omitted the operator generates <partition>-agent-key. Immutable, set or not: "
            "rotate a key by updating the Secret, not this field."
        ),
        "keyDelivery": string(
            "How the key reaches the guest: SecretVolume attaches the Secret as a disk, "
            "CloudInit writes it through cloud-init user data. The guest never receives "
            "cluster credentials either way.",
            enum=["SecretVolume", "CloudInit"],
            default="SecretVolume",
        ),
        "heartbeatTimeout": duration(
            "How long without a heartbeat before AgentConnected becomes False.",
            default="90s",
        ),
    },
)

# Condition PagingReady (spec.paging) and its reasons; an event of the same name when it changes.
PAGING_READY = "PagingReady"
PAGING_ATTACHED = "PagingAttached"  # True
POOL_NOT_FOUND = "VIOSClusterNotFound"
POOL_NOT_READY = "VIOSClusterNotReady"
PAGING_SIZE_UNKNOWN = "PagingSizeUnknown"
PAGING_NEEDS_TEMPLATE = "PagingNeedsTemplate"
PAGING_NOT_READY = "PagingNotReady"  # Warning event, when PagingReady becomes False
PAGING_DISK = "lparkube-paging"  # the VM's disk and volume, and the disk's serial

# Condition StorageReady (the storage behind the VM's claim-backed disks) and its reasons; the
# events of a disk whose backing changed (domain/backing_storage.py decides; docs/api.md).
STORAGE_READY = "StorageReady"
STORAGE_BOUND = "Bound"  # True
BACKING_LOST = "BackingLost"  # False: a claim or volume is gone (the disks named)
CLAIM_PENDING = "ClaimPending"  # False: a claim is not bound yet
BACKING_REPLACED_EVENT = "BackingStorageReplaced"  # Normal
BACKING_RESIZED_EVENT = "BackingStorageResized"  # Normal
BACKING_LOST_EVENT = "BackingStorageLost"  # Warning
MAX_DISKS = 64

PAGING = obj(
    "The swap (AMS paging) LU: a disk lparkube-paging (serial lparkube-paging) the guest uses "
    "as swap and as its hibernation target.",
    {
        "size": size(
            "The LU's size; the VM's memory x 1.25 when omitted. At most the pool's thin.maxSize."
        ),
    },
)

SPEC = obj(
    "The desired state of a Partition. Set exactly one of vmTemplate and vmName.",
    {
        "vmTemplate": VM_TEMPLATE,
        "vmName": immutable(
            name_ref(
                "An existing VirtualMachine in this namespace to adopt. The operator adds "
                "itself as an owner but never deletes an adopted VM."
            ),
            "spec.vmName",
        ),
        "agent": AGENT_SPEC,
        "saveOnEvacuation": boolean(
            "Save every registered application before KubeVirt evacuates this VM from a "
            "draining node (VMIs with evictionStrategy External).",
            default=True,
        ),
        "viosClusterName": name_ref(
            "The VIOSCluster whose pool holds this partition's logical units (paging, "
            "hibernation, dump)."
        ),
        "paging": PAGING,
        "failover": failover.SPEC,
    },
    rules=(
        Rule(
            "has(self.vmTemplate) != has(self.vmName)",
            "exactly one of spec.vmTemplate or spec.vmName must be set",
        ),
        Rule(
            "has(self.vmName) == has(oldSelf.vmName)",
            "a Partition cannot switch between vmTemplate and vmName after creation",
        ),
        set_once("agent.keySecretName", "spec.agent.keySecretName"),
        Rule(
            "!has(self.paging) || has(self.viosClusterName)",
            "spec.paging needs spec.viosClusterName: the VIOSCluster the paging LU comes from",
            field_path=".viosClusterName",
        ),
    ),
)

ADDRESS = obj(
    "An address of the VM on one of its interfaces.",
    {
        "interface": string("The KubeVirt interface name."),
        "ip": string("The IP address."),
    },
)

AGENT_STATUS = obj(
    "What the guest agent last reported.",
    {
        "keySecretName": string("The Secret holding the partition key."),
        "endpoint": string("host:port the operator uses to reach the agent."),
        "version": string("The guest agent's version."),
        "lastHeartbeatTime": timestamp(
            "The signed time of the last report accepted (the guest's clock, within 60s of the "
            "operator's); only a report signed later is accepted, so a replay never moves it."
        ),
        "bootTime": timestamp("When the guest last booted, as the agent reported."),
        "kernelRelease": string("The guest kernel release (uname -r)."),
        "vmcoreinfo": obj(
            "Where the guest kernel keeps its VMCOREINFO note, read from /sys/kernel/vmcoreinfo "
            "at boot; a crash dump is decoded with it.",
            {
                "address": string("Physical address, hexadecimal.", pattern=r"^0x[0-9a-f]+$"),
                "size": integer("Size in bytes.", minimum=0),
            },
        ),
        "applications": integer("Applications registered with the agent.", minimum=0),
        "bootId": string(
            "The guest kernel's boot id (/proc/sys/kernel/random/boot_id): the same after a "
            "resume from hibernation, new at every boot.",
            max_length=64,
        ),
        "memory": obj(
            "The guest's memory, from /proc/meminfo.",
            {
                "totalBytes": integer("MemTotal, in bytes.", minimum=0),
                "availableBytes": integer("MemAvailable, in bytes.", minimum=0),
            },
        ),
        "paging": obj(
            "The paging disk (serial lparkube-paging) as the agent found it: the swap device "
            "and hibernation target.",
            {
                "serial": string("The disk's serial.", max_length=64),
                "device": string("The guest's device node, e.g. /dev/vdc.", max_length=256),
                "sizeBytes": integer("The disk's size in bytes.", minimum=0),
                "swapBytes": integer(
                    "The swap area's size (/proc/swaps); below sizeBytes after the LU grew, "
                    "until the area is re-made.",
                    minimum=0,
                ),
                "active": boolean("The disk is swap now."),
                "message": string(
                    "Why it is not swap (a hibernation image on it, a failed swapon), or empty.",
                    max_length=1024,
                ),
            },
        ),
        "watchdog": failover.WATCHDOG_STATUS,
        "storage": obj(
            "What the agent did for the last storage change it was told of (POST /v1/storage).",
            {
                "id": string("The change's id.", max_length=64),
                "disks": array(
                    "Each disk of the change as the guest found it.",
                    obj(
                        "One disk.",
                        {
                            "serial": string("The disk's serial.", max_length=253),
                            "device": string("The guest's device node, or empty.", max_length=256),
                            "sizeBytes": integer("Its size now, in bytes.", minimum=0),
                            "rescanned": boolean("The agent asked the kernel to rescan it."),
                            "message": string("What the agent found.", max_length=1024),
                        },
                    ),
                    max_items=MAX_DISKS,
                ),
            },
        ),
        "hibernation": obj(
            "The agent's last hibernate run.",
            {
                "id": string("The run's id: the HibernationImage's uid.", max_length=256),
                "state": string(
                    "Hibernating (the image is being written), Resumed (the guest was "
                    "restored from it) or Failed.",
                    enum=["Hibernating", "Resumed", "Failed"],
                ),
                "requestedAt": timestamp("When the agent accepted the run."),
                "resumedAt": timestamp("When the guest ran again after the image."),
                "imageBytes": integer(
                    "What the kernel said it copied into the image, in bytes.", minimum=0
                ),
                "message": string("Why the run failed, or empty.", max_length=1024),
            },
        ),
    },
)

DISK_STATUS = obj(
    "The storage that last backed one claim-backed disk of the VM.",
    {
        "name": string("The VM's disk (and volume) name.", max_length=253),
        "serial": string("The disk's serial: its own, else its name.", max_length=253),
        "claimName": string("The PersistentVolumeClaim (a DataVolume's has its name)."),
        "claimUid": string("The claim's uid when it was recorded.", max_length=64),
        "volumeName": string("The PersistentVolume the claim was bound to.", max_length=253),
        "capacityBytes": integer("The claim's capacity, in bytes.", minimum=0),
        "phase": string(
            "Bound; Lost (the claim or its volume is gone); Pending (never bound yet).",
            enum=["Bound", "Lost", "Pending"],
        ),
    },
    required=("name",),
)

STORAGE_CHANGE = obj(
    "The last change of the disks' backing storage, and whether the guest agent was told.",
    {
        "id": string("The change's id: the agent acts on an id once.", max_length=64),
        "disks": array(
            "The disks that changed.",
            obj(
                "One disk's change.",
                {
                    "name": string("The disk's name.", max_length=253),
                    "serial": string("The disk's serial.", max_length=253),
                    "change": string("What changed.", enum=["Replaced", "Resized", "Lost"]),
                },
            ),
            max_items=MAX_DISKS,
        ),
        "delivered": boolean("The guest agent answered for this change (POST /v1/storage)."),
        "message": string(
            "What the agent did (rescanned, re-read), or why it could not be told yet.",
            max_length=1024,
        ),
    },
)

STATUS = obj(
    "The observed state of a Partition, mirrored from KubeVirt and the guest agent.",
    {
        "observedGeneration": observed_generation(),
        "conditions": conditions(
            "Ready (VM running and agent connected), VMReady (the VMI runs and is ready), "
            "AgentConnected (the guest agent reported within heartbeatTimeout), StorageReady "
            "(every claim-backed disk's claim is bound to a volume)."
        ),
        "vmName": string("The VirtualMachine this Partition manages."),
        "nodeName": string("The node the VM runs on."),
        "addresses": array("The VM's addresses.", ADDRESS, max_items=16),
        "agent": AGENT_STATUS,
        "paging": obj(
            "The paging LU attached to the VM.",
            {
                "claimName": string("The LU's PersistentVolumeClaim."),
                "size": string("The LU's storage request, as a quantity."),
            },
        ),
        "disks": array(
            "The storage behind the VM's claim-backed disks, as last recorded.",
            DISK_STATUS,
            max_items=MAX_DISKS,
            map_keys=["name"],
        ),
        "storageChange": STORAGE_CHANGE,
        "failover": failover.STATUS,
    },
)

PARTITION = CustomResource(
    kind="Partition",
    plural="partitions",
    scope="Namespaced",
    short_names=("part", "parts"),
    description="A KubeVirt VirtualMachine protected by lparkube: its guest agent saves "
    "applications' unsaved data on predefined events.",
    spec=SPEC,
    status=STATUS,
    columns=(
        PrinterColumn("VM", "string", ".status.vmName", "The VirtualMachine."),
        condition_column("Ready", "Ready", "VM running and guest agent connected."),
        condition_column("Agent", "AgentConnected", "Guest agent connected."),
        PrinterColumn("Node", "string", ".status.nodeName", "The node the VM runs on."),
        PrinterColumn("Apps", "integer", ".status.agent.applications", "Registered applications."),
        PrinterColumn("IP", "string", ".status.addresses[0].ip", "First VM address.", priority=1),
        PrinterColumn(
            "Kernel", "string", ".status.agent.kernelRelease", "Guest kernel.", priority=1
        ),
        AGE_COLUMN,
    ),
)
