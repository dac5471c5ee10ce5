"""Analysis stores no data of its own yet: win rates are computed from votes (issue: analysis)."""
