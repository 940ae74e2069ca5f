"""The Kubernetes operator's home (kopf handlers over pure planning functions).

It is built by the operator issue; until then the package holds no code, and the CLI has
no `operator` command.
"""
