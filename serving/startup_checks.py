"""Fail closed: the service does not start open to anyone, or with the public identifier salt, and
never serves PACS data without an API key.

Without an API key every caller who can reach the port can search the archive; with the public
default salt (:data:`regionmir.identifiers.DEFAULT_SALT`) an 8-digit medical record number can be
recovered from its ``patient_hash`` by trying all 10⁸ of them. Both are refused at start-up
unless the operator says, with ``--insecure-dev`` (``insecure_dev: true`` in a Ray Serve
application's args), that this is a demo or a test on a private machine.

A PACS is another matter: its films, UIDs and reports are a hospital's records, so a service that
reaches one is never started without an API key, ``--insecure-dev`` or not. Two checks say so:

* here, before Ray starts: a ``pacs.dicomweb_url`` without an API key (:func:`pacs_problems`);
* at readiness, where the index's stored film locations are first opened
  (:meth:`serving.runtime.SearchRuntime.pacs_connected`): an index whose films are PACS instances
  on a service without a key is not ready (``checks.index.reason``: :data:`PACS_REQUIRES_API_KEY`,
  one of :data:`FATAL_READINESS_REASONS`, which ``start_service`` refuses at once instead of
  waiting), and its routes answer 503 ``pacs_requires_api_key`` for every piece of PACS data
  (:meth:`serving.pacs.PacsLink.require_api_key`).
"""

from __future__ import annotations

import os

from regionmir.identifiers import DEFAULT_SALT, SALT_ENV

from .config import ConfigError, ServeSettings

#: The readiness reason (and error reason) of PACS data on a service without an API key.
PACS_REQUIRES_API_KEY = "pacs_requires_api_key"
#: Readiness reasons no wait can fix: the start stops at once with the readiness check's problem.
FATAL_READINESS_REASONS: tuple[str, ...] = (PACS_REQUIRES_API_KEY,)


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


def pacs_problems(settings: ServeSettings) -> list[str]:
    """What ``--insecure-dev`` does not waive: a PACS (``pacs.dicomweb_url``) without an API key."""
    if settings.pacs.dicomweb_url and not settings.auth.api_key:
        return [
            "a PACS (pacs.dicomweb_url) and no API key (set REGIONMIR_API_KEY or REGIONMIR_API_KEY_FILE): "
            "anyone who reaches the port could fetch the hospital's films and store reports in it; "
            "--insecure-dev does not waive this"
        ]
    return []


def require_secure(settings: ServeSettings, insecure_dev: bool, environ: dict[str, str] | None = None) -> list[str]:
    """Raise :class:`ConfigError` naming every problem, unless ``insecure_dev`` (which never waives
    :func:`pacs_problems`); then return them (the caller warns)."""
    refused = pacs_problems(settings)
    if refused:
        raise ConfigError("refusing to start: " + "; ".join(refused))
    problems = insecure_settings(settings, environ)
    if problems and not insecure_dev:
        raise ConfigError(
            "refusing to start: "
            + "; ".join(problems)
            + ". Pass --insecure-dev (insecure_dev: true in application args) for a demo or a "
            "test on a private machine."
        )
    return problems
