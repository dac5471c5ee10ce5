"""Campaign and assignment operations (issue: annotation). Not built yet."""
