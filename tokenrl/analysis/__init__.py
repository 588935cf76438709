"""Analysis tools over any tokenrl model (spec: shared/specs/analysis-and-auditing.md §1-§3)."""
