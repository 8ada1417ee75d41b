"""The Cairn sync server: workspaces, API keys and the mutation log every device syncs through.

``storage`` is the narrow interface the app needs from a database (``storage.sqlite`` and
``storage.postgres`` implement it); ``app`` serves it over HTTP. The composition root that
reads the environment and wires them is ``cairn.cli.server``.
"""
