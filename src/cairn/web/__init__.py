"""What both web UIs share: templates, one stylesheet, vendored assets, SVG charts, CSRF checks.

The local memory browser (``cairn serve``) and the sync server's admin console (``cairn server
run``) are two edges that may not import each other; what they have in common lives here, below
them: ``templating`` (a Jinja2 environment, the base page, the assets mounted at ``/assets``),
``charts`` (bars and lines as server-rendered SVG), ``csrf`` (tokens and the Origin and
Sec-Fetch-Site checks) and ``openapi`` (``/docs`` from the vendored Swagger UI, so it works
offline). Nothing here loads from another host: every script, style and image is in the package.
"""
