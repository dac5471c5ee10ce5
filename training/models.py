"""Curation and quality-tuning runs (issue: training). Not built yet.

A finished run registers its output with
generation.services.register_model(source="quality_tuned", parent=base_model).
"""
