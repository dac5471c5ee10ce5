"""Helpers every app shares and none owns: service errors, rate limits, CSV cells, file locks, slug names,
command polling.

``core`` imports no app (evalsite, generation, annotation, analysis, training) and holds no models, so any layer
may use it without creating a dependency between apps.
"""
