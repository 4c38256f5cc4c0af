"""How every ``regionmir`` command prints ``--help``: each option's default shown, once.

``ArgumentDefaultsHelpFormatter`` appends ``(default: …)`` to every option, which doubles the
defaults our help texts already explain and prints ``(default: None)``/``(default: False)`` for
flags. :class:`DefaultsHelpFormatter` appends it only where the text does not mention a default
and the default says something.
"""

from __future__ import annotations

import argparse

from .console import add_logging_arguments


class DefaultsHelpFormatter(argparse.HelpFormatter):
    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (
            not action.option_strings
            or "default" in text.lower()
            or default is None
            or default is True
            or default is False
            or default == argparse.SUPPRESS
            or default == ""
        ):
            return text
        return f"{text} (default: %(default)s)" if text else "default: %(default)s"


def version() -> str:
    """The installed package's version (``regionmir --version``)."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    try:
        return installed("regionmir")
    except PackageNotFoundError:
        return "unknown (not installed)"


def command_parser(*, logging_options: bool = True, **kwargs) -> argparse.ArgumentParser:
    """An ``ArgumentParser`` whose ``--help`` shows the defaults (:class:`DefaultsHelpFormatter`),
    with ``--verbose`` and ``--log-format`` (:func:`regionmir.console.add_logging_arguments`)."""
    parser = argparse.ArgumentParser(formatter_class=DefaultsHelpFormatter, **kwargs)
    if logging_options:
        add_logging_arguments(parser)
    return parser


def logging_options_parser() -> argparse.ArgumentParser:
    """``--verbose`` and ``--log-format`` as a parent parser, for subcommands."""
    parent = argparse.ArgumentParser(add_help=False)
    add_logging_arguments(parent)
    return parent
