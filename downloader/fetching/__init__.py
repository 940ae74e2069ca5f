"""Fetching: one download attempt and everything that guards it.

`download` streams a URL to a temporary file through `outbound`, the one place that decides
which destinations may be reached; `mime` and `imaging` check what arrived; `diskcheck` keeps
a full disk from being written to.
"""
