"""The agent's version, reported to the operator and printed by `lparkube-agent version`."""

VERSION = "0.1.0"
