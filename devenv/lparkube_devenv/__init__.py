"""Local development environment: a real control plane and a KubeVirt stand-in (not shipped)."""
