"""mailgate: put a home Mailcow server on the internet through a cloud gateway.

This package is pure domain code (settings, port catalogue, renderers, CLI); it never
imports pulumi. The Pulumi components in ``components/`` join it to cloud resources.
"""
