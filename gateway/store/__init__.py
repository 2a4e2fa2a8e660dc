"""Storage interfaces and the embedded SQLite implementation."""
