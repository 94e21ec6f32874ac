"""Secrets kept out of everything that can be read back: one rule for what a secret looks like and how it is masked.

A tracking or backend URI may carry `user:password@`. `take_password` moves the password into the environment
variable its client reads (libpq's `PGPASSWORD`, MLflow's `MLFLOW_TRACKING_USERNAME`/`_PASSWORD`) before the URI
goes anywhere, so what the sweep stores (its metadata, Tune's state, MLflow tags, the resolved sweep file) holds
the URI without it; `mask` is the second line: whatever text is printed, logged or stored goes through it, with
URI passwords and the values of secret-named environment variables replaced by `***`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from urllib.parse import unquote, urlsplit, urlunsplit

MASK = "***"
# scheme://user:password@  (the password runs to the last '@' before the path: an unencoded '@' stays inside)
_USERINFO = re.compile(r"(?P<head>\b[A-Za-z][A-Za-z0-9+.-]*://[^:/@\s]*):(?P<password>[^/\s]*)@")
_QUERY_PASSWORD = re.compile(r"(?P<head>[?&](?:password|passwd|pwd)=)[^&\s#]*", re.IGNORECASE)
# environment variables whose values are secrets: PGPASSWORD, MLFLOW_TRACKING_PASSWORD, AWS_SECRET_ACCESS_KEY, …
SECRET_NAME = re.compile(r"PASSW|SECRET|TOKEN|CREDENTIAL|(?:^|_)KEY(?:$|_)|PGPASS", re.IGNORECASE)
NOT_SECRET = re.compile(r"_(?:PATH|FILE|DIR|MODE)$", re.IGNORECASE)  # where a secret is, not the secret
MIN_SECRET_LEN = 6  # shorter values (flags, ports) would mask ordinary words


def mask_uri(text: str) -> str:
    """`text` with every URI password (`scheme://user:PASSWORD@`, `?password=…`) replaced by `***`.

    >>> mask_uri("postgresql://pclc:s3cret@db:5432/mlflow and http://h:5000")
    'postgresql://pclc:***@db:5432/mlflow and http://h:5000'
    """
    text = _USERINFO.sub(lambda m: f"{m['head']}:{MASK}@", text)
    return _QUERY_PASSWORD.sub(lambda m: m["head"] + MASK, text)


def secret_values(env: Mapping[str, str] | None = None) -> list[str]:
    """The values of secret-named environment variables (`SECRET_NAME`), longest first."""
    env = os.environ if env is None else env
    found = {
        v for k, v in env.items() if SECRET_NAME.search(k) and not NOT_SECRET.search(k) and len(v) >= MIN_SECRET_LEN
    }
    return sorted(found, key=len, reverse=True)


def mask(text: str, env: Mapping[str, str] | None = None) -> str:
    """`text` safe to print, log or store: URI passwords and secret environment values (e.g. a `${PGPASSWORD}`
    that a sweep file expanded) replaced by `***`."""
    text = mask_uri(text)
    for value in secret_values(env):
        text = text.replace(value, MASK)
    return text


# the environment variables a client reads a password (and user) from, by URI scheme
_PASSWORD_ENV = {"postgresql": ("PGPASSWORD", None), "http": ("MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_USERNAME")}


def take_password(uri: str) -> str:
    """`uri` without its password, which now sits in the environment variable its client reads (PostgreSQL:
    `PGPASSWORD`; an MLflow server: `MLFLOW_TRACKING_USERNAME`/`_PASSWORD`). A URI without one comes back as it is.

    Raises ValueError for a password this process could not hand over that way (another database, a
    `?password=` query): it would otherwise be printed and stored with the URI."""
    if _QUERY_PASSWORD.search(uri):
        raise ValueError(f"{mask_uri(uri)}: a password in the query string would be stored with the URI; {_WHERE}")
    parts = urlsplit(uri)
    if parts.password is None:
        return uri
    scheme = parts.scheme.split("+")[0]  # postgresql+psycopg2 → postgresql
    family = "http" if scheme in ("http", "https") else scheme
    if family not in _PASSWORD_ENV:
        raise ValueError(f"{mask_uri(uri)}: a password in a {parts.scheme} URI would be stored with it; {_WHERE}")
    password_var, user_var = _PASSWORD_ENV[family]
    os.environ[password_var] = unquote(parts.password)
    if user_var is not None and parts.username is not None:
        os.environ[user_var] = unquote(parts.username)
    host = parts.netloc.rsplit("@", 1)[1]
    user = "" if user_var is not None or parts.username is None else parts.username + "@"
    return urlunsplit(parts._replace(netloc=user + host))


_WHERE = (
    "leave it out of the URI: PostgreSQL reads ~/.pgpass (mode 600) or PGPASSWORD, an MLflow server "
    "MLFLOW_TRACKING_USERNAME/MLFLOW_TRACKING_PASSWORD (docs/cluster.md)"
)
