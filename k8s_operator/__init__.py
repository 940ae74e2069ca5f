"""The Kubernetes operator (`downloader operator`): kopf handlers over `downloader.cluster.planning`.

This folder is installed as `downloader.operator`. It is not called `operator/` at the top
of the checkout, as DESIGN.md first drew it: a package folder of that name shadows the
standard library's `operator` module for every `python -m ...` run from the checkout
(`python -m venv`, `python -m pip` fail at once), and without its `__init__.py` neither mypy's
nor import-linter's view of the package would include it.
"""
