"""The tool-using turn: route to skills, open and run them in the sandbox, answer (Read -> Execute)."""
