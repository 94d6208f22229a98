"""The browser pages: landing, sign-up, log-in, the Profile and Activity pages, and the operator's dashboard
(server-rendered, no script).

Served bare and under the mount prefix, never under ``/v1``: they are the product's pages, not its API.
"""

from __future__ import annotations

from api.pages import activity, auth, dashboard, profile

ROUTES = [
    ("GET", "/", auth.landing),
    ("GET", "/signup", auth.signup_page),
    ("POST", "/signup", auth.signup),
    ("GET", "/login", auth.login_page),
    ("POST", "/login", auth.login),
    ("POST", "/logout", auth.logout),
    ("GET", "/profile", profile.profile),
    ("GET", "/profile/activity", activity.activity),
    ("GET", "/profile/activity.csv", activity.activity_csv),
    ("GET", "/operator", dashboard.dashboard),
    ("POST", "/profile/keys", profile.create_key),
    ("POST", "/profile/keys/{key_id}/revoke", profile.revoke_key),
    ("POST", "/profile/credits", profile.add_credits),
    ("POST", "/profile/verify", profile.resend_verification),
    ("GET", "/verify", auth.verify),
]
