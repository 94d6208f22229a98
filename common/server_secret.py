"""The deployment's server secret, and the start-up checks of the web tier's other secrets.

The secret keys what must not be reversible from a copy of the store alone: the email index of accounts
(an HMAC of the normalised email, ``api/access/accounts.py``), so a leaked store does not say who has an
account, and emails are not stored in plain text anywhere.

Where it comes from, in order:

1. ``MEGABRAIN_SECRET`` (at least 32 characters; on Heroku ``app.json`` generates one). Every web process of
   a deployment must have the same value, and it must stay the same: with another secret, existing accounts
   are no longer found by their email (their records stay; restore the old value to reach them again).
2. Without it, on the embedded store (``megabrain serve`` without ``REDIS_URL``, and ``megabrain web`` joining
   it): a random secret created once in the store's directory (``secret``, mode 0600, beside the AOF) and
   read from there afterwards.
3. Otherwise (``REDIS_URL`` set, no ``MEGABRAIN_SECRET``) the web tier refuses to start, saying so: a secret
   made up per process would lose every account at the next restart.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from common.settings import ConfigError, Settings

MIN_SECRET = 32  # characters, for MEGABRAIN_SECRET, MEGABRAIN_ADMIN_KEY and MEGABRAIN_METRICS_KEY
SECRET_FILE = "secret"
STORE_SOCKET = "redis.sock"  # common/store.py's socket name (common/store.py imports nothing of this)


def check_web_secrets(settings: Settings) -> bytes:
    """The server secret; refuses (``ConfigError``, a message for the operator) a web tier whose admin key,
    metrics key or secret is too short to resist guessing, or that has no secret to keep."""
    for variable, value in (("MEGABRAIN_ADMIN_KEY", settings.admin_key),
                            ("MEGABRAIN_METRICS_KEY", settings.metrics_key),
                            ("MEGABRAIN_SECRET", settings.secret)):
        if value is not None and len(value) < MIN_SECRET:
            raise ConfigError(f"{variable} is {len(value)} characters long; it must have at least {MIN_SECRET} "
                              "(generate one: python3 -c 'import secrets; print(secrets.token_urlsafe(32))')")
    return server_secret(settings)


def server_secret(settings: Settings) -> bytes:
    if settings.secret:
        return settings.secret.encode()
    store = _embedded_store_dir(settings.redis_url)
    if store is None:
        raise ConfigError("MEGABRAIN_SECRET is not set. With REDIS_URL the web tier needs a secret of at least "
                          f"{MIN_SECRET} characters, the same for every web process and kept across restarts: "
                          "it keys the account email index (python3 -c 'import secrets; "
                          "print(secrets.token_urlsafe(32))')")
    return _file_secret(store / SECRET_FILE)


def _embedded_store_dir(redis_url: str | None) -> Path | None:
    """The directory of an embedded store (a unix socket named like ours), or None."""
    if not redis_url or not redis_url.startswith("unix://"):
        return None
    socket = Path(redis_url[len("unix://"):].split("?", 1)[0])
    return socket.parent if socket.name == STORE_SOCKET else None


def _file_secret(path: Path) -> bytes:
    """The secret kept in ``path``: created once (written aside, then linked into place, so a process
    starting at the same moment reads either nothing or the whole of it), read afterwards."""
    if not path.exists():
        draft = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
        fd = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as file:
            file.write(secrets.token_urlsafe(32) + "\n")
        try:
            os.link(draft, path)
        except FileExistsError:
            pass  # another process made it first: theirs it is
        finally:
            draft.unlink()
    value = path.read_text().strip()
    if len(value) < MIN_SECRET:
        raise ConfigError(f"{path} holds no usable secret; delete it to make a new one (accounts made with the "
                          "old one will no longer be found by their email)")
    return value.encode()
