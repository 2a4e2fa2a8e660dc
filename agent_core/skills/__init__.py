"""The shared skill library: folders with SKILL.md, versioned, indexed for routing."""
