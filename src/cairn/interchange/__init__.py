"""Moving memories in and out of a store: JSON Lines export and import."""
