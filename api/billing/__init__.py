"""Paying for credits: top-ups through Stripe Checkout, and the webhook that turns a payment into credit.

``checkout`` creates a Checkout Session server-side (the amount in cents, the account as
``client_reference_id``) and hands the person to Stripe's page: the gateway never sees card data.
``webhook`` verifies Stripe's signed events with the SDK and writes ledger entries (``common/ledger.py``):
a paid session credits once, a refund debits once, whatever is replayed or reordered. May import
``common`` and the root's ``gateway`` (for types); never ``api.routes``, ``api.exchange`` or ``api.pages``.
"""
