"""Curation and quality-tuning operations (issue: training). Not built yet."""
