"""(placeholder: routes of this module are being built)"""

from __future__ import annotations

ROUTES: list = []
