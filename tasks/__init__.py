"""Prefect tasks: thin wrappers over ``molerd.pipeline`` stage functions (retries, logging, no logic)."""
