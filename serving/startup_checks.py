"""Fail closed: the service does not start open to anyone, or with the public identifier salt.

Without an API key every caller who can reach the port can search the archive; with the public
default salt (:data:`regionmir.identifiers.DEFAULT_SALT`) an 8-digit medical record number can be
recovered from its ``patient_hash`` by trying all 10⁸ of them. Both are refused at start-up
unless the operator says, with ``--insecure-dev`` (``insecure_dev: true`` in a Ray Serve
application's args), that this is a demo or a test on a private machine.
"""

from __future__ import annotations

import os

from regionmir.identifiers import DEFAULT_SALT, SALT_ENV

from .config import ConfigError, ServeSettings


def insecure_settings(settings: ServeSettings, environ: dict[str, str] | None = None) -> list[str]:
    """What makes this service unsafe to expose; empty when nothing does."""
    env = os.environ if environ is None else environ
    problems = []
    if not settings.auth.api_key:
        problems.append(
            "no API key (set REGIONMIR_API_KEY or REGIONMIR_API_KEY_FILE): /v1/* would be open to "
            "anyone who reaches the port"
        )
    if (env.get(SALT_ENV) or DEFAULT_SALT) == DEFAULT_SALT:
        problems.append(
            f"no identifier salt ({SALT_ENV} unset): patient hashes would use the public default "
            "salt, and 8-digit record numbers could be recovered from them"
        )
    return problems


def require_secure(settings: ServeSettings, insecure_dev: bool, environ: dict[str, str] | None = None) -> list[str]:
    """Raise :class:`ConfigError` naming every problem, unless ``insecure_dev``; then return them
    (the caller warns)."""
    problems = insecure_settings(settings, environ)
    if problems and not insecure_dev:
        raise ConfigError(
            "refusing to start: "
            + "; ".join(problems)
            + ". Pass --insecure-dev (insecure_dev: true in application args) for a demo or a "
            "test on a private machine."
        )
    return problems
