"""The ``res2net`` subcommands' argument parsing, one module per group; each defines
``register(subparsers)`` and sets ``func`` (taking the parsed args, returning an exit code) on its parsers.
:mod:`res2net.cli` assembles them; :mod:`.common` holds what they share."""
