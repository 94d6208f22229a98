"""One module per HTTP surface: validate the request, plan it, hand it to the exchange.

A route module owns its paths (``ROUTES``) and its request's shape; it decides nothing about limits,
queues or answers itself. It may import ``api.exchange``, ``api.access``, ``api.formats``, ``api.billing``, the root's
``gateway``, ``router`` and ``common`` — never another route's internals beyond a shared helper.
``uploads.py`` is no route but the multipart reading the upload routes share (transcriptions, image
edits); what image, speech and rerank models take is ``router/media.py``'s data. ``responses.py`` is the
OpenAI Responses route (``/v1/responses``, stored and background responses too),
``streams.py`` resumes a detached stream of any format; the HTTP responses a request ends with are
written by ``api/exchange/answer.py``.
"""
