"""agent_core."""
