"""Finding memories: the in-memory vector index and hybrid (semantic + keyword) recall."""
