"""Transports to a sync remote, each behind the one interface of ``cairn.remotes.base``."""
