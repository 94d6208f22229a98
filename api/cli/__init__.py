"""The ``megabrain`` command: the processes (``main``: serve, web, worker) and the operator's tools
(``keys``, ``catalog`` for models and providers, ``status``).

No part of the web tier imports this room. It may import any room of ``api`` (the processes start the
app; the tools reuse the admin API's JSON shapes), ``workers``, ``router`` and ``common``.
"""
