"""The web tier: authenticates a request, plans it, enqueues it and answers from the pool's events.

It never calls an upstream. Its rooms, and the one direction their imports run
(routes → exchange → access → ``common``/``router``; ``formats`` and ``pages`` beside them):

- ``routes/``   one module per HTTP surface: validate, plan, hand over;
- ``exchange/`` one request's life, from admission to its single, idempotent finish;
- ``access/``   who may do what, and how much: keys, limits, accounts, sessions, client IP;
- ``formats/``  the client wire formats (chat completions, Anthropic Messages, OpenAI Responses, Gemini);
- ``pages/``    the server-rendered browser pages (templates in ``templates/``);
- ``cli/``      the ``megabrain`` command: the processes and the operator's tools.

At this root live only the ASGI app (``app.py``) and the process-wide state every room may read:
``gateway.py`` (settings, catalog, Redis, the relay), ``http_protocol.py`` and ``provider_health.py``.
Nothing in ``common/``, ``router/`` or ``workers/`` imports ``api``.
"""
