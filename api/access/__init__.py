"""Who may do what, and how much: API keys, limits and budgets, admission, accounts, sessions, client IP.

``check`` is the decision (key, free or paid model, limits, budget) and ``limits`` its one Redis script;
``worst_case`` what a request could cost at most, the amount that script holds;
``admission`` binds that decision to a live HTTP request; ``keys`` stores keys and their usage;
``client_ip`` derives the caller's address through trusted hops only; ``accounts``, ``sessions`` and
``login_guard`` are the signed-in people behind keys. May import the root's ``gateway`` (for types),
``router`` and ``common``; never ``api.routes`` or ``api.exchange``.
"""
