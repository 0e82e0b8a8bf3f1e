"""The engine: one job, top to bottom, from a validated request to events and files."""
