"""Ingest of the institute's uploads: completion, validation, the versioned store and quarantine."""
