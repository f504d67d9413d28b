"""OpenAPI v3 schemas of the KubeVirt API types, written as small composable functions.

Field names, types and nesting follow KubeVirt's ``kubevirt.io/api`` Go types (core/v1 and
snapshot/v1beta1) for everything an operator reads or writes. Parts that are large and rarely
used (probes' handlers, Hyper-V features, DNS config, launch security, ...) are objects that keep
unknown fields, which is also how KubeVirt itself treats a few open-ended parts (clock, template
metadata). Descriptions are our own words.
"""

from __future__ import annotations

from typing import Any

Schema = dict[str, Any]

RUN_STRATEGIES = ("Always", "RerunOnFailure", "Manual", "Halted", "Once", "WaitAsReceiver")
EVICTION_STRATEGIES = ("None", "LiveMigrate", "LiveMigrateIfPossible", "External")
VMI_PHASES = ("Pending", "Scheduling", "Scheduled", "Running", "Succeeded", "Failed", "Unknown")
MIGRATION_PHASES = (
    "Pending",
    "Scheduling",
    "Scheduled",
    "PreparingTarget",
    "TargetReady",
    "Running",
    "Succeeded",
    "Failed",
)
SNAPSHOT_PHASES = ("InProgress", "Succeeded", "Failed", "Deleting", "Unknown")
MEMORY_DUMP_PHASES = (
    "Associating",
    "InProgress",
    "Unmounting",
    "Completed",
    "Dissociating",
    "Failed",
)
QUANTITY_PATTERN = (
    r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]"
    r"|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)


# --- primitives -----------------------------------------------------------------------------


def _with(schema: Schema, description: str | None, extra: dict[str, Any]) -> Schema:
    if description:
        schema["description"] = description
    schema.update(extra)
    return schema


def obj(
    properties: dict[str, Schema] | None = None,
    description: str | None = None,
    required: tuple[str, ...] = (),
    **extra: Any,
) -> Schema:
    """An object with known properties."""
    schema: Schema = {"type": "object"}
    if properties:
        schema["properties"] = properties
    if required:
        schema["required"] = list(required)
    return _with(schema, description, extra)


def open_obj(description: str | None = None, **extra: Any) -> Schema:
    """An object whose content the API server keeps as given (no pruning, no validation)."""
    return obj(description=description, **{"x-kubernetes-preserve-unknown-fields": True, **extra})


def arr(items: Schema, description: str | None = None, **extra: Any) -> Schema:
    return _with({"type": "array", "items": items}, description, extra)


def string(description: str | None = None, enum: tuple[str, ...] = (), **extra: Any) -> Schema:
    schema: Schema = {"type": "string"}
    if enum:
        schema["enum"] = list(enum)
    return _with(schema, description, extra)


def boolean(description: str | None = None, **extra: Any) -> Schema:
    return _with({"type": "boolean"}, description, extra)


def integer(description: str | None = None, fmt: str = "int32", **extra: Any) -> Schema:
    return _with({"type": "integer", "format": fmt}, description, extra)


def quantity(description: str | None = None) -> Schema:
    """A resource quantity such as 2Gi or 500m (an int or a string)."""
    schema: Schema = {
        "anyOf": [{"type": "integer"}, {"type": "string"}],
        "pattern": QUANTITY_PATTERN,
        "x-kubernetes-int-or-string": True,
    }
    return _with(schema, description, {})


def timestamp(description: str | None = None) -> Schema:
    return string(description, format="date-time", nullable=True)


def string_map(description: str | None = None) -> Schema:
    return obj(description=description, additionalProperties={"type": "string"})


def quantity_map(description: str | None = None) -> Schema:
    return obj(description=description, additionalProperties=quantity())


def local_ref(description: str | None = None) -> Schema:
    return obj({"name": string("Name of the referenced object.")}, description)


def typed_local_ref(description: str | None = None) -> Schema:
    return obj(
        {
            "apiGroup": string("API group of the referenced object; empty for the core group."),
            "kind": string("Kind of the referenced object."),
            "name": string("Name of the referenced object."),
        },
        description,
        required=("kind", "name"),
        **{"x-kubernetes-map-type": "atomic"},
    )


def condition(description: str = "One observed condition of the object.") -> Schema:
    return obj(
        {
            "type": string("Condition type, e.g. Ready."),
            "status": string("True, False or Unknown."),
            "lastProbeTime": timestamp(),
            "lastTransitionTime": timestamp("When status last changed."),
            "reason": string("Machine-readable reason of the last transition."),
            "message": string("Human-readable details."),
        },
        description,
        required=("type", "status"),
    )


def conditions(description: str = "Observed conditions.") -> Schema:
    return arr(condition(), description)


# --- Kubernetes core types used inside KubeVirt's specs ---------------------------------------


def toleration() -> Schema:
    return obj(
        {
            "key": string("Taint key the toleration applies to; empty matches all keys."),
            "operator": string("Exists or Equal (default)."),
            "value": string("Taint value to match with operator Equal."),
            "effect": string("NoSchedule, PreferNoSchedule or NoExecute; empty matches all."),
            "tolerationSeconds": integer("How long a NoExecute taint is tolerated.", "int64"),
        },
        "Lets the VMI run on nodes with a matching taint.",
    )


def node_selector_term() -> Schema:
    requirement = obj(
        {
            "key": string(),
            "operator": string("In, NotIn, Exists, DoesNotExist, Gt or Lt."),
            "values": arr(string()),
        },
        required=("key", "operator"),
    )
    return obj(
        {"matchExpressions": arr(requirement), "matchFields": arr(requirement)},
        "Node label requirements, ANDed.",
    )


def affinity() -> Schema:
    node_affinity = obj(
        {
            "requiredDuringSchedulingIgnoredDuringExecution": obj(
                {"nodeSelectorTerms": arr(node_selector_term(), "ORed terms.")},
                "Hard requirement; the VMI is not scheduled unless one term matches.",
                required=("nodeSelectorTerms",),
            ),
            "preferredDuringSchedulingIgnoredDuringExecution": arr(open_obj()),
        },
        "Node affinity of the VMI.",
    )
    return obj(
        {
            "nodeAffinity": node_affinity,
            "podAffinity": open_obj("Pod affinity of the virt-launcher pod."),
            "podAntiAffinity": open_obj("Pod anti-affinity of the virt-launcher pod."),
        },
        "Scheduling constraints, as for pods.",
    )


def probe() -> Schema:
    return obj(
        {
            "exec": open_obj("Command run in the guest through the guest agent."),
            "guestAgentPing": obj(description="Ping the guest agent."),
            "httpGet": open_obj(),
            "tcpSocket": open_obj(),
            "initialDelaySeconds": integer(),
            "timeoutSeconds": integer(),
            "periodSeconds": integer(),
            "successThreshold": integer(),
            "failureThreshold": integer(),
        },
        "Periodic health check of the VMI.",
    )


# --- domain ------------------------------------------------------------------------------------


def cpu() -> Schema:
    return obj(
        {
            "cores": integer("Cores per socket (>= 1)."),
            "sockets": integer("Sockets (>= 1)."),
            "threads": integer("Threads per core (>= 1)."),
            "maxSockets": integer("Upper bound of sockets for CPU hotplug."),
            "model": string("CPU model, host-model (default) or host-passthrough."),
            "features": arr(
                obj({"name": string(), "policy": string()}, required=("name",)),
                "CPU feature flags.",
            ),
            "dedicatedCpuPlacement": boolean("Pin vCPUs to dedicated host CPUs."),
            "isolateEmulatorThread": boolean(),
            "numa": obj({"guestMappingPassthrough": obj()}),
            "realtime": obj({"mask": string()}),
        },
        "Guest CPU topology and model.",
    )


def memory() -> Schema:
    return obj(
        {
            "guest": quantity("Memory the guest sees; defaults to the memory request."),
            "maxGuest": quantity("Upper bound for memory hotplug."),
            "hugepages": obj({"pageSize": string("2Mi or 1Gi on x86_64.")}),
        },
        "Guest memory settings.",
    )


def resources() -> Schema:
    return obj(
        {
            "requests": quantity_map("Initial resources (memory, cpu)."),
            "limits": quantity_map("Maximum resources (memory, cpu)."),
            "overcommitGuestOverhead": boolean(),
        },
        "Compute resources of the VMI.",
    )


def firmware() -> Schema:
    bootloader = obj(
        {
            "bios": obj({"useSerial": boolean()}, "Boot with BIOS (default)."),
            "efi": obj(
                {"secureBoot": boolean(), "persistent": boolean()}, "Boot with UEFI (OVMF)."
            ),
        }
    )
    kernel_boot = obj(
        {
            "kernelArgs": string(),
            "container": obj(
                {
                    "image": string(),
                    "imagePullSecret": string(),
                    "imagePullPolicy": string(),
                    "kernelPath": string(),
                    "initrdPath": string(),
                },
                required=("image",),
            ),
        }
    )
    return obj(
        {
            "uuid": string("SMBIOS UUID of the guest."),
            "serial": string("SMBIOS system serial number."),
            "bootloader": bootloader,
            "kernelBoot": kernel_boot,
            "acpi": open_obj(),
        },
        "Firmware of the guest.",
    )


def features() -> Schema:
    state = obj({"enabled": boolean()})
    return obj(
        {
            "acpi": state,
            "apic": obj({"enabled": boolean(), "endOfInterrupt": boolean()}),
            "smm": state,
            "kvm": obj({"hidden": boolean()}),
            "pvspinlock": state,
            "hyperv": open_obj("Hyper-V enlightenments."),
            "hypervPassthrough": obj({"enabled": boolean()}),
        },
        "Machine features.",
    )


def disk() -> Schema:
    target = {"bus": string("virtio, sata, scsi or usb."), "readonly": boolean()}
    return obj(
        {
            "name": string("Disk name; must match a volume name."),
            "disk": obj({**target, "pciAddress": string()}, "Attach as a disk."),
            "lun": obj({**target, "reservation": boolean()}, "Attach as a LUN."),
            "cdrom": obj({**target, "tray": string("open or closed.")}, "Attach as a CD-ROM."),
            "bootOrder": integer("Boot order; lower boots first."),
            "serial": string(),
            "dedicatedIOThread": boolean(),
            "cache": string("none, writethrough or writeback."),
            "io": string("native or threads."),
            "tag": string(),
            "blockSize": obj(
                {
                    "custom": obj(
                        {
                            "logical": integer(),
                            "physical": integer(),
                            "discardGranularity": integer(),
                        }
                    ),
                    "matchVolume": obj({"enabled": boolean()}),
                }
            ),
            "shareable": boolean(),
            "errorPolicy": string("stop, ignore, report or enospace."),
        },
        "A disk, CD-ROM or LUN backed by a volume.",
        required=("name",),
    )


def interface() -> Schema:
    port = obj({"name": string(), "protocol": string(), "port": integer()}, required=("port",))
    return obj(
        {
            "name": string("Interface name; must match a network name."),
            "model": string("NIC model, virtio by default."),
            "bridge": obj(description="Connect through a Linux bridge."),
            "masquerade": obj(description="Connect through NAT (pod network)."),
            "sriov": obj(description="Pass an SR-IOV VF through."),
            "passt": obj(),
            "slirp": obj(),
            "macvtap": obj(),
            "binding": obj({"name": string()}, "Network binding plugin.", required=("name",)),
            "ports": arr(port, "Ports to forward (masquerade)."),
            "macAddress": string("MAC address, e.g. de:ad:00:00:be:af."),
            "bootOrder": integer(),
            "pciAddress": string(),
            "dhcpOptions": open_obj(),
            "tag": string(),
            "acpiIndex": integer(),
            "state": string("absent requests hot-unplug."),
        },
        "A guest network interface connected to a network.",
        required=("name",),
    )


def devices() -> Schema:
    return obj(
        {
            "disks": arr(disk(), "Disks, CD-ROMs and LUNs.", maxItems=256),
            "interfaces": arr(interface(), "Network interfaces.", maxItems=256),
            "inputs": arr(
                obj({"name": string(), "type": string(), "bus": string()}, required=("name",))
            ),
            "watchdog": open_obj(),
            "panicDevices": arr(
                obj({"model": string("One of isa, hyperv, pvpanic.")}),
                "Panic devices: the guest tells the hypervisor it crashed.",
            ),
            "rng": obj(description="Random number generator from the host."),
            "tpm": obj({"persistent": boolean()}),
            "gpus": arr(open_obj()),
            "hostDevices": arr(open_obj()),
            "filesystems": arr(open_obj()),
            "sound": open_obj(),
            "downwardMetrics": obj(),
            "clientPassthrough": obj(),
            "autoattachPodInterface": boolean("Attach the pod network by default (true)."),
            "autoattachGraphicsDevice": boolean(),
            "autoattachSerialConsole": boolean(),
            "autoattachMemBalloon": boolean(),
            "autoattachInputDevice": boolean(),
            "autoattachVSOCK": boolean(),
            "blockMultiQueue": boolean(),
            "networkInterfaceMultiqueue": boolean(),
            "disableHotplug": boolean(),
            "useVirtioTransitional": boolean(),
        },
        "Devices of the guest.",
    )


def domain() -> Schema:
    return obj(
        {
            "resources": resources(),
            "cpu": cpu(),
            "memory": memory(),
            "machine": obj({"type": string("QEMU machine type, e.g. q35.")}),
            "firmware": firmware(),
            "clock": open_obj("Guest clock and timers."),
            "features": features(),
            "devices": devices(),
            "ioThreadsPolicy": string("shared, auto or supplementalPool."),
            "ioThreads": open_obj(),
            "chassis": obj(
                {k: string() for k in ("manufacturer", "version", "serial", "asset", "sku")}
            ),
            "launchSecurity": open_obj(),
        },
        "The virtual hardware of the guest.",
        required=("devices",),
    )


# --- volumes, networks, credentials --------------------------------------------------------


def cloud_init() -> Schema:
    return obj(
        {
            "secretRef": local_ref("Secret with the user data (key userdata or userData)."),
            "userData": string("Inline user data."),
            "userDataBase64": string("Base64 user data."),
            "networkDataSecretRef": local_ref(),
            "networkData": string(),
            "networkDataBase64": string(),
        }
    )


def volume() -> Schema:
    claim = {"claimName": string("PVC name in the VMI's namespace."), "readOnly": boolean()}
    label = {"volumeLabel": string("Label of the disk the guest sees.")}
    return obj(
        {
            "name": string("Volume name; disks refer to it."),
            "containerDisk": obj(
                {
                    "image": string("Image with the disk under /disk."),
                    "imagePullSecret": string(),
                    "imagePullPolicy": string(),
                    "path": string(),
                },
                "Ephemeral disk from a container image.",
                required=("image",),
            ),
            "persistentVolumeClaim": obj(
                {**claim, "hotpluggable": boolean()},
                "A PVC attached directly.",
                required=("claimName",),
            ),
            "dataVolume": obj(
                {"name": string("DataVolume (and PVC) name."), "hotpluggable": boolean()},
                "A CDI DataVolume.",
                required=("name",),
            ),
            "cloudInitNoCloud": cloud_init(),
            "cloudInitConfigDrive": cloud_init(),
            "secret": obj(
                {"secretName": string(), "optional": boolean(), **label},
                "A Secret as a disk.",
            ),
            "configMap": obj({"name": string(), "optional": boolean(), **label}),
            "serviceAccount": obj({"serviceAccountName": string()}),
            "downwardAPI": obj({"fields": arr(open_obj()), **label}),
            "downwardMetrics": obj(),
            "emptyDisk": obj({"capacity": quantity()}, required=("capacity",)),
            "ephemeral": obj(
                {"persistentVolumeClaim": obj(claim, required=("claimName",))},
                "Copy-on-write layer over a PVC.",
            ),
            "hostDisk": obj(
                {
                    "path": string(),
                    "type": string("Disk or DiskOrCreate."),
                    "capacity": quantity(),
                    "shared": boolean(),
                },
                required=("path", "type"),
            ),
            "memoryDump": obj(
                {**claim, "hotpluggable": boolean()},
                "The PVC a memory dump is written to.",
                required=("claimName",),
            ),
            "sysprep": obj({"secret": local_ref(), "configMap": local_ref()}),
            "containerPath": open_obj(),
        },
        "A named volume; exactly one source.",
        required=("name",),
    )


def network() -> Schema:
    return obj(
        {
            "name": string("Network name; interfaces refer to it."),
            "pod": obj(
                {"vmNetworkCIDR": string(), "vmIPv6NetworkCIDR": string()},
                "The default pod network.",
            ),
            "multus": obj(
                {
                    "networkName": string("NetworkAttachmentDefinition, [namespace/]name."),
                    "default": boolean(),
                },
                "A secondary network through Multus.",
                required=("networkName",),
            ),
        },
        "A network the VMI connects to.",
        required=("name",),
    )


def access_credential() -> Schema:
    secret_source = obj({"secret": obj({"secretName": string()}, required=("secretName",))})
    ssh = obj(
        {
            "source": secret_source,
            "propagationMethod": obj(
                {
                    "configDrive": obj(),
                    "noCloud": obj(),
                    "qemuGuestAgent": obj(
                        {"users": arr(string(), **{"x-kubernetes-list-type": "set"})},
                        required=("users",),
                    ),
                }
            ),
        },
        "SSH public keys from a Secret.",
        required=("source", "propagationMethod"),
    )
    password = obj(
        {
            "source": secret_source,
            "propagationMethod": obj({"qemuGuestAgent": obj()}),
        },
        "User passwords from a Secret.",
        required=("source", "propagationMethod"),
    )
    return obj({"sshPublicKey": ssh, "userPassword": password}, "Credentials for the guest.")


# --- VMI ---------------------------------------------------------------------------------------


def vmi_spec() -> Schema:
    return obj(
        {
            "domain": domain(),
            "nodeSelector": string_map("Node labels the VMI requires."),
            "affinity": affinity(),
            "tolerations": arr(toleration(), "Taints the VMI tolerates."),
            "topologySpreadConstraints": arr(open_obj()),
            "schedulerName": string(),
            "priorityClassName": string(),
            "evictionStrategy": string(
                "What a node drain does: None, LiveMigrate, LiveMigrateIfPossible or External.",
                EVICTION_STRATEGIES,
            ),
            "startStrategy": string("Paused starts the guest paused.", ("Paused",)),
            "terminationGracePeriodSeconds": integer("Shutdown grace period.", "int64"),
            "volumes": arr(volume(), "Volumes the disks use.", maxItems=256),
            "networks": arr(network(), "Networks the interfaces use.", maxItems=256),
            "livenessProbe": probe(),
            "readinessProbe": probe(),
            "hostname": string(),
            "subdomain": string(),
            "dnsPolicy": string(),
            "dnsConfig": open_obj(),
            "accessCredentials": arr(
                access_credential(), maxItems=256, **{"x-kubernetes-list-type": "atomic"}
            ),
            "architecture": string("Guest architecture, e.g. amd64."),
            "resourceClaims": arr(open_obj()),
        },
        "Specification of a virtual machine instance.",
        required=("domain",),
    )


def migration_state() -> Schema:
    return obj(
        {
            "startTimestamp": timestamp(),
            "endTimestamp": timestamp(),
            "targetNodeDomainReadyTimestamp": timestamp(),
            "targetNodeDomainDetected": boolean(),
            "targetNodeAddress": string(),
            "targetDirectMigrationNodePorts": obj(additionalProperties={"type": "integer"}),
            "targetNode": string("Node the VMI moves to."),
            "targetPod": string(),
            "targetAttachmentPodUID": string(),
            "sourceNode": string("Node the VMI leaves."),
            "sourcePod": string(),
            "completed": boolean(),
            "failed": boolean(),
            "abortRequested": boolean(),
            "abortStatus": string(),
            "failureReason": string(),
            "migrationUid": string("UID of the VirtualMachineInstanceMigration."),
            "mode": string("PreCopy or PostCopy."),
            "migrationPolicyName": string(),
            "migrationConfiguration": open_obj(),
            "targetCPUSet": arr(integer()),
            "targetNodeTopology": string(),
        },
        "State of the current or last live migration.",
        nullable=True,
    )


def vmi_status() -> Schema:
    interface_status = obj(
        {
            "name": string("Network name from the spec."),
            "interfaceName": string("Interface name inside the guest (from the agent)."),
            "ipAddress": string("First IP address of the interface."),
            "ipAddresses": arr(string()),
            "mac": string(),
            "infoSource": string("domain, guest-agent, multus-status."),
            "queueCount": integer(),
            "podInterfaceName": string(),
            "linkState": string(),
        }
    )
    guest_os = obj(
        {
            k: string()
            for k in (
                "name",
                "kernelRelease",
                "version",
                "prettyName",
                "versionId",
                "kernelVersion",
                "machine",
                "id",
            )
        },
        "Guest OS as reported by the guest agent.",
    )
    volume_status = obj(
        {
            "name": string(),
            "target": string(),
            "phase": string(),
            "reason": string(),
            "message": string(),
            "size": integer(fmt="int64"),
            "persistentVolumeClaimInfo": open_obj(),
            "hotplugVolume": open_obj(),
            "memoryDumpVolume": obj(
                {
                    "claimName": string(),
                    "targetFileName": string(),
                    "startTimestamp": timestamp(),
                    "endTimestamp": timestamp(),
                }
            ),
            "containerDiskVolume": open_obj(),
        },
        required=("name", "target"),
    )
    return obj(
        {
            "phase": string("Lifecycle phase of the VMI.", VMI_PHASES),
            "reason": string("Why the VMI is in this phase, e.g. NodeUnresponsive."),
            "nodeName": string("Node the VMI runs on."),
            "conditions": conditions(),
            "phaseTransitionTimestamps": arr(
                obj({"phase": string(), "phaseTransitionTimestamp": timestamp()}),
                **{"x-kubernetes-list-type": "atomic"},
            ),
            "interfaces": arr(interface_status, "Network interfaces and their addresses."),
            "guestOSInfo": guest_os,
            "migrationState": migration_state(),
            "migrationMethod": string("LiveMigration or BlockMigration."),
            "migrationTransport": string(),
            "qosClass": string(),
            "launcherContainerImageVersion": string("virt-launcher image of the VMI."),
            "evacuationNodeName": string("Node being drained that the VMI must leave."),
            "activePods": string_map("Pod UID to node name."),
            "volumeStatus": arr(volume_status, **{"x-kubernetes-list-type": "atomic"}),
            "fsFreezeStatus": string("frozen while the guest file systems are frozen."),
            "kernelBootStatus": open_obj(),
            "topologyHints": open_obj(),
            "virtualMachineRevisionName": string(),
            "runtimeUser": integer(fmt="int64"),
            "VSOCKCID": integer(fmt="int64"),
            "selinuxContext": string(),
            "machine": obj({"type": string()}),
            "currentCPUTopology": obj(
                {"cores": integer(), "sockets": integer(), "threads": integer()}
            ),
            "memory": obj(
                {
                    "guestAtBoot": quantity(),
                    "guestCurrent": quantity(),
                    "guestRequested": quantity(),
                }
            ),
            "migratedVolumes": arr(open_obj()),
            "deviceStatus": open_obj(),
            "changedBlockTracking": open_obj(),
        },
        "Observed state of the VMI, written by virt-controller and virt-handler.",
    )


def top_level(description: str, spec: Schema, status: Schema, required=("spec",)) -> Schema:
    return obj(
        {
            "apiVersion": string("Versioned schema of this object."),
            "kind": string("Kind of this object."),
            "metadata": obj(),
            "spec": spec,
            "status": status,
        },
        description,
        required=required,
    )


def vmi() -> Schema:
    return top_level("A running virtual machine.", vmi_spec(), vmi_status())


# --- VM ----------------------------------------------------------------------------------------


def matcher(what: str) -> Schema:
    return obj(
        {
            "name": string(f"Name of the {what}."),
            "kind": string(),
            "revisionName": string(),
            "inferFromVolume": string(),
            "inferFromVolumeFailurePolicy": string(),
        },
        f"Reference to a {what}.",
    )


def vm_spec() -> Schema:
    template = obj(
        {
            "metadata": open_obj("Labels and annotations for the VMI.", nullable=True),
            "spec": vmi_spec(),
        },
        "Template the VMI is created from.",
    )
    rule = {
        "rule": "!(has(self.running) && has(self.runStrategy))",
        "message": "running and runStrategy are mutually exclusive; use runStrategy",
    }
    return obj(
        {
            "running": boolean("Deprecated: true means runStrategy Always, false Halted."),
            "runStrategy": string(
                "When a VMI exists: Always, RerunOnFailure, Manual, Halted, Once "
                "or WaitAsReceiver.",
                RUN_STRATEGIES,
            ),
            "instancetype": matcher("instance type"),
            "preference": matcher("preference"),
            "template": template,
            "dataVolumeTemplates": arr(
                obj(
                    {"metadata": open_obj(nullable=True), "spec": open_obj(), "status": open_obj()},
                    required=("spec",),
                ),
                "DataVolumes created with the VM.",
            ),
            "updateVolumesStrategy": string("Replacement or Migration."),
        },
        "Desired state of a virtual machine.",
        required=("template",),
        **{"x-kubernetes-validations": [rule]},
    )


def vm_status() -> Schema:
    change_request = obj(
        {
            "action": string("Start or Stop."),
            "data": string_map(),
            "uid": string("UID of the VMI the request applies to."),
        },
        required=("action",),
    )
    dump = obj(
        {
            "claimName": string("PVC the memory is dumped to."),
            "phase": string(enum=MEMORY_DUMP_PHASES),
            "remove": boolean(),
            "startTimestamp": timestamp(),
            "endTimestamp": timestamp(),
            "fileName": string("Name of the dump file on the PVC."),
            "message": string(),
        },
        "Progress of the last memory dump request.",
        required=("claimName", "phase"),
        nullable=True,
    )
    return obj(
        {
            "printableStatus": string("High-level status for humans.", default="Stopped"),
            "created": boolean("A VMI exists."),
            "ready": boolean("The VMI is running and ready."),
            "conditions": conditions(),
            "stateChangeRequests": arr(change_request, "Pending start/stop requests."),
            "volumeRequests": arr(open_obj(), **{"x-kubernetes-list-type": "atomic"}),
            "volumeSnapshotStatuses": arr(
                obj(
                    {"name": string(), "enabled": boolean(), "reason": string()},
                    required=("name", "enabled"),
                ),
                "Whether each volume can be snapshotted.",
            ),
            "snapshotInProgress": string(),
            "restoreInProgress": string(),
            "startFailure": obj(
                {
                    "consecutiveFailCount": integer(),
                    "lastFailedVMIUID": string(),
                    "retryAfterTimestamp": timestamp(),
                },
                nullable=True,
            ),
            "memoryDumpRequest": dump,
            "observedGeneration": integer(fmt="int64"),
            "desiredGeneration": integer(fmt="int64"),
            "runStrategy": string("Run strategy last acted on."),
            "instancetypeRef": open_obj(),
            "preferenceRef": open_obj(),
            "changedBlockTracking": open_obj(),
        },
        "Observed state of the VM.",
    )


def vm() -> Schema:
    return top_level("A virtual machine that can be started and stopped.", vm_spec(), vm_status())


# --- migration ---------------------------------------------------------------------------------


def vmim() -> Schema:
    spec = obj(
        {
            "vmiName": string("VMI to migrate, in the migration's namespace."),
            "addedNodeSelector": string_map("Extra node labels the target must have."),
            "receive": open_obj(),
            "sendTo": open_obj(),
        },
    )
    status = obj(
        {
            "phase": string(enum=MIGRATION_PHASES),
            "conditions": conditions(),
            "phaseTransitionTimestamps": arr(
                obj({"phase": string(), "phaseTransitionTimestamp": timestamp()}),
                **{"x-kubernetes-list-type": "atomic"},
            ),
            "migrationState": migration_state(),
            "synchronizationAddresses": arr(string()),
        },
    )
    return top_level("A live migration of a VMI to another node.", spec, status)


# --- snapshot.kubevirt.io ----------------------------------------------------------------------


def snapshot_error() -> Schema:
    return obj({"time": timestamp(), "message": string()}, "Last error.")


def snapshot() -> Schema:
    spec = obj(
        {
            "source": typed_local_ref("The VirtualMachine to snapshot."),
            "deletionPolicy": string("Delete or Retain the content with the snapshot."),
            "failureDeadline": string("How long the snapshot may take, e.g. 5m."),
        },
        required=("source",),
    )
    status = obj(
        {
            "sourceUID": string(),
            "virtualMachineSnapshotContentName": string(),
            "creationTime": timestamp(),
            "phase": string(enum=SNAPSHOT_PHASES),
            "readyToUse": boolean("The snapshot can be restored."),
            "error": snapshot_error(),
            "conditions": conditions(),
            "indications": arr(
                string(description="Online, GuestAgent or NoGuestAgent."),
                **{"x-kubernetes-list-type": "set"},
            ),
            "snapshotVolumes": obj(
                {"includedVolumes": arr(string()), "excludedVolumes": arr(string())}
            ),
            "sourceIndications": arr(open_obj()),
        },
    )
    return top_level("A point-in-time snapshot of a VirtualMachine.", spec, status)


def snapshot_content() -> Schema:
    spec = obj(
        {
            "virtualMachineSnapshotName": string(),
            "source": obj(
                {
                    "virtualMachine": obj(
                        {
                            "metadata": open_obj(nullable=True),
                            "spec": open_obj(),
                            "status": open_obj(),
                        }
                    )
                }
            ),
            "volumeBackups": arr(open_obj()),
        },
        required=("source",),
    )
    status = obj(
        {
            "creationTime": timestamp(),
            "readyToUse": boolean(),
            "error": snapshot_error(),
            "volumeSnapshotStatus": arr(open_obj()),
        }
    )
    return top_level("The data of a VirtualMachineSnapshot.", spec, status)


def restore() -> Schema:
    spec = obj(
        {
            "target": typed_local_ref("The VirtualMachine to restore into."),
            "virtualMachineSnapshotName": string("Snapshot to restore."),
            "targetReadinessPolicy": string(
                "StopTarget, WaitGracePeriod, FailImmediate or WaitEventually."
            ),
            "patches": arr(string(), **{"x-kubernetes-list-type": "atomic"}),
            "volumeRestorePolicy": string(),
            "volumeOwnershipPolicy": string(),
        },
        required=("target", "virtualMachineSnapshotName"),
    )
    status = obj(
        {
            "restores": arr(
                obj(
                    {
                        "volumeName": string(),
                        "persistentVolumeClaim": string(),
                        "volumeSnapshotName": string(),
                        "dataVolumeName": string(),
                    }
                )
            ),
            "restoreTime": timestamp(),
            "deletedDataVolumes": arr(string()),
            "complete": boolean("The restore finished."),
            "conditions": conditions(),
        }
    )
    return top_level("Restores a VirtualMachine from a snapshot.", spec, status)
