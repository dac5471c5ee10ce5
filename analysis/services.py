"""Builds vote frames and renders reports (issue: analysis). Not built yet."""
