"""The ``geostore`` command. Subcommands live in ``geostore.cli.cmd_<name>`` and load lazily."""
