"""Local services that both the tests and the benchmarks start: not product code, never installed.

`testbed.controlplane` runs the real Kubernetes control plane (etcd + kube-apiserver,
controller-manager, scheduler and kwok) built by `tests/controlplane/build.sh`. The tests'
`cluster` fixture (tests/k8s/conftest.py) and `bench/operator_bench.py` both start it, so it
lives here rather than under tests/ (benchmarks import no test code) or under bench/ (tests
import no benchmark code), in one copy.

How it is imported, without the repository root on sys.path (its `downloader/` folder would
hide the installed `downloader.api`, `.worker` and `.operator`):
- pytest: `pythonpath = ["tests", "tools"]` in pyproject.toml;
- the benchmarks: bench/hostinfo.py, which every benchmark imports first, appends `tools/`.

Only what more than one of tests/ and bench/ needs belongs here; the helpers that only tests
share live in tests/support.
"""
