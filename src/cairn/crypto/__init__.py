"""End-to-end encryption: the workspace keyring and sealed payloads."""
