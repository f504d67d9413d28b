"""The operator process around kopf: leader election, probes, metrics, signal handling."""

from lparkube.runtime.manager import EXIT_FAILURE, EXIT_OK, run

__all__ = ["EXIT_FAILURE", "EXIT_OK", "run"]
