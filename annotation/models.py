"""Comparison campaigns, assignments and votes (issue: annotation).

Not built yet. It will read generation.GeneratedImage pairs: two models'
images for the same (prompt, seed, parameters).
"""
