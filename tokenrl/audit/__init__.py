"""Auditing hidden tokens (spec: shared/specs/analysis-and-auditing.md §4-§5)."""
