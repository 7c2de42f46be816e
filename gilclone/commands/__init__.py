"""One module per CLI subcommand, each with ``configure_parser(subparsers)`` and ``execute(args)``."""
