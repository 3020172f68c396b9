"""Pulumi ComponentResources: they join mailgate's settings and renderers to OCI,
Tailscale and remote-command resources. File text is never built here."""
