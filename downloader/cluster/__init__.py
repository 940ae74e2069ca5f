"""Cluster: the Kubernetes side of the core, free of kopf.

`planning` turns an aggregation's limit and backlog into the objects it needs, as pure functions
over plain data; `kube` is the thin client that reads and writes them on the API server.
"""
