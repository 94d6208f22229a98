"""One request's life on the web tier, from its admission to its single, idempotent finish.

``dispatch`` is what every model route does after validating (admit, build the job, enqueue, answer);
``exchange`` owns the request from submit to ``finish`` (pickup and liveness deadlines, re-runs,
cancel); ``relay`` is the process's one pub/sub subscription routing events to waiting requests;
``answer`` turns events into one JSON body or a stream in the route's format; ``background`` follows a
detached answer (background, resumable) with no connection and keeps its events for any web process to
replay; ``stored`` keeps Responses objects and rebuilds their conversations; ``observe`` writes the
request's log line and metrics once; ``body`` decodes a request body once, strictly; ``ids`` names it.
May import ``api.access``, ``api.formats``, the root's ``gateway``, ``router`` and ``common``; never
``api.routes``.
"""
