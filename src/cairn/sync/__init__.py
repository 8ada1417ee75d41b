"""The sync engine: payload encoding, the merge rules, applying pulled state, scope tags."""
