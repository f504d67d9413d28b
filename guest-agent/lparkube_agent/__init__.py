"""lparkube guest agent: runs inside a Partition's VM (standard library only)."""
