"""A custom resource kind described once, rendered into a CustomResourceDefinition."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from lparkube.api.schema import Rule, Schema, obj

GROUP = "lparkube.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
CATEGORY = "lparkube"


@dataclass(frozen=True)
class PrinterColumn:
    """A column of `kubectl get`; priority 1 columns show only with `-o wide`."""

    name: str
    type: str
    json_path: str
    description: str
    priority: int = 0

    def render(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "type": self.type,
            "jsonPath": self.json_path,
            "description": self.description,
        }
        if self.priority:
            out["priority"] = self.priority
        return out


def condition_column(name: str, condition: str, description: str) -> PrinterColumn:
    """A column that shows the status of one condition."""
    path = f'.status.conditions[?(@.type=="{condition}")].status'
    return PrinterColumn(name, "string", path, description)


AGE_COLUMN = PrinterColumn("Age", "date", ".metadata.creationTimestamp", "Time since creation.")


@dataclass(frozen=True)
class CustomResource:
    """One kind of the lparkube.io API: its names, schema and `kubectl get` columns."""

    kind: str
    plural: str
    scope: str
    description: str
    spec: Schema
    status: Schema
    short_names: tuple[str, ...] = ()
    columns: tuple[PrinterColumn, ...] = ()
    rules: tuple[Rule, ...] = field(default=())

    @property
    def singular(self) -> str:
        return self.kind.lower()

    @property
    def crd_name(self) -> str:
        return f"{self.plural}.{GROUP}"

    def open_api_schema(self) -> Schema:
        """The root schema: apiVersion, kind, metadata, spec and status."""
        root = obj(
            self.description,
            {
                "apiVersion": {
                    "type": "string",
                    "description": "The versioned schema of this object: lparkube.io/v1alpha1.",
                },
                "kind": {"type": "string", "description": f"Always {self.kind}."},
                "metadata": {"type": "object"},
                "spec": self.spec,
                "status": self.status,
            },
            required=("spec",),
            rules=self.rules,
        )
        return root

    def crd(self) -> dict[str, Any]:
        """The CustomResourceDefinition object for this kind."""
        return {
            "apiVersion": "apiextensions.k8s.io/v1",
            "kind": "CustomResourceDefinition",
            "metadata": {
                "name": self.crd_name,
                "labels": {"app.kubernetes.io/part-of": "lparkube"},
            },
            "spec": {
                "group": GROUP,
                "scope": self.scope,
                "names": {
                    "kind": self.kind,
                    "listKind": f"{self.kind}List",
                    "plural": self.plural,
                    "singular": self.singular,
                    "shortNames": list(self.short_names),
                    "categories": [CATEGORY],
                },
                "versions": [
                    {
                        "name": VERSION,
                        "served": True,
                        "storage": True,
                        "schema": {"openAPIV3Schema": self.open_api_schema()},
                        "subresources": {"status": {}},
                        "additionalPrinterColumns": [c.render() for c in self.columns],
                    }
                ],
            },
        }
