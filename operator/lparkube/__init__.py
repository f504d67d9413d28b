"""lparkube: resilience layer for KubeVirt virtual machines."""
