"""VIOSCluster: the nodes that serve partition I/O and the storage pool logical units come from."""

from lparkube.api.resource import AGE_COLUMN, CustomResource, PrinterColumn, condition_column
from lparkube.api.schema import (
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
    size,
    string,
)

# The labels and annotations that make a PVC a logical unit (LU) and a Partition's claim on it.
VIOS_CLUSTER_LABEL = "lparkube.io/vios-cluster"
LU_PURPOSE_LABEL = "lparkube.io/lu-purpose"
CLAIMED_BY_ANNOTATION = "lparkube.io/claimed-by"  # the claiming Partition's uid
# Set (to the claimant's uid) once the claim is set up; before that its Lease guards it.
CLAIM_COMMITTED_ANNOTATION = "lparkube.io/claim-committed"
LEASE_PREFIX = "lu-"  # the claim Lease of PVC <name> is lu-<name>

PAGING, HIBERNATION, DUMP = "paging", "hibernation", "dump"
LU_PURPOSES = (PAGING, HIBERNATION, DUMP)

# Condition Ready and its reasons.
READY = "Ready"
POOL_READY = "PoolReady"  # the True reason, and the event when Ready is True again
STORAGE_CLASS_NOT_FOUND = "StorageClassNotFound"
EXPANSION_NOT_ALLOWED = "ExpansionNotAllowed"
NO_READY_NODES = "NoReadyNodes"

# Events.
NODE_JOINED = "NodeJoined"
NODE_LEFT = "NodeLeft"
POOL_NOT_READY = "PoolNotReady"  # Warning, when Ready becomes False

ACCESS_MODES = ["ReadWriteOnce", "ReadWriteMany", "ReadOnlyMany", "ReadWriteOncePod"]

STORAGE = obj(
    "The StorageClass-backed pool LUs are cut from.",
    {
        "storageClassName": name_ref(
            "The StorageClass of every LU; it must allow volume expansion, since LUs are thin "
            "(requested small, expanded on demand)."
        ),
        "accessModes": array(
            "The access modes of every LU; ReadWriteMany lets a partition restart on another "
            "node without a detach.",
            string("An access mode.", enum=ACCESS_MODES),
            max_items=4,
            min_items=1,
            set_list=True,
        ),
        "volumeMode": string(
            "Block gives the VM a raw disk; Filesystem a disk image on a filesystem.",
            enum=["Block", "Filesystem"],
            default="Block",
        ),
    },
    required=("storageClassName",),
)
STORAGE["properties"]["accessModes"]["default"] = ["ReadWriteOnce"]

THIN = obj(
    "Thin provisioning: a new LU is requested at initialSize and expanded on demand up to "
    "what its purpose needs, never beyond maxSize.",
    {
        "initialSize": size("The first request of a new LU.", default="1Gi"),
        "maxSize": size("The largest one LU may grow to; unbounded when omitted."),
    },
    rules=(
        Rule(
            "!has(self.maxSize) || quantity(self.maxSize).compareTo(quantity(self.initialSize))"
            " >= 0",
            "thin.maxSize must be at least thin.initialSize",
            field_path=".maxSize",
        ),
    ),
)

SPEC = obj(
    "Which nodes serve partition I/O and the pool LUs are cut from.",
    {
        "nodeSelector": label_selector(
            "The nodes that serve partition I/O (VIOS nodes); all nodes when omitted."
        ),
        "storage": STORAGE,
        "thin": THIN,
        "reuse": boolean(
            "Reuse (and expand) a free LU of the same namespace and purpose before creating "
            "one; when false a released LU is deleted.",
            default=True,
        ),
        "lockTimeout": duration(
            "How long an LU claim's Lease holds without renewal: a claim not completed within "
            "it (its holder died) frees the LU again, deleting nothing.",
            default="5m",
        ),
    },
    required=("storage",),
)
SPEC["properties"]["thin"]["default"] = {}


def _lu_counts(description: str) -> dict:
    return obj(
        description,
        {
            "total": integer("LUs of the pool.", minimum=0),
            "inUse": integer("LUs a partition holds (claimed and committed).", minimum=0),
            "claiming": integer(
                "LUs being claimed: their claim's Lease is live, the claim not yet committed.",
                minimum=0,
            ),
            "free": integer(
                "LUs nobody holds, including ones whose claim's Lease expired uncommitted.",
                minimum=0,
            ),
            "requestedBytes": integer("The sum of the LUs' storage requests.", minimum=0),
            "usedBytes": integer(
                "The sum of the storage requests of LUs in use or being claimed.", minimum=0
            ),
        },
    )


LOGICAL_UNITS = _lu_counts("Counts of the pool's LUs in every namespace (never a list).")
LOGICAL_UNITS["properties"]["byPurpose"] = obj(
    "The same counts per purpose.",
    {p: _lu_counts(f"LUs labelled lparkube.io/lu-purpose={p}.") for p in LU_PURPOSES},
)

NODE = obj(
    "A node that matches nodeSelector.",
    {
        "name": string("The node."),
        "ready": boolean("Whether the node's Ready condition is True."),
    },
    required=("name", "ready"),
)

STATUS = obj(
    "The pool's nodes, its LU counts and whether it can serve LUs.",
    {
        "observedGeneration": observed_generation(),
        "conditions": conditions(
            "Ready (the StorageClass exists and allows expansion, and at least one VIOS node "
            "is ready)."
        ),
        "nodes": array("The VIOS nodes.", NODE, max_items=5000, map_keys=["name"]),
        "readyNodes": integer("How many of the VIOS nodes are ready.", minimum=0),
        "logicalUnits": LOGICAL_UNITS,
    },
)

VIOS_CLUSTER = CustomResource(
    kind="VIOSCluster",
    plural="viosclusters",
    scope="Cluster",
    short_names=("vios",),
    description="A cluster of Virtual I/O Servers: the nodes that serve partition I/O and the "
    "shared storage pool thin logical units (paging, hibernation, dump) are cut from.",
    spec=SPEC,
    status=STATUS,
    columns=(
        condition_column("Ready", READY, "The pool can serve LUs."),
        PrinterColumn("Nodes", "integer", ".status.readyNodes", "Ready VIOS nodes."),
        PrinterColumn("LUs", "integer", ".status.logicalUnits.total", "Logical units."),
        PrinterColumn("Free", "integer", ".status.logicalUnits.free", "Free logical units."),
        PrinterColumn(
            "StorageClass",
            "string",
            ".spec.storage.storageClassName",
            "The pool's StorageClass.",
            priority=1,
        ),
        AGE_COLUMN,
    ),
)
