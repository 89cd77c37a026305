"""Command-line interface: ``gitmq`` and the gem's ``gitmq-produce``/``gitmq-consume``."""
