"""Test support: the services, servers and helpers of the tests, imported as `support.<module>`.

pytest puts tests/ on sys.path (`pythonpath` in pyproject.toml), so no test file or conftest
edits sys.path. Test folders hold tests, conftest.py fixtures and non-Python inputs (build
scripts, pom.xml, Go modules); every Python helper a test imports lives here, flat:

- `procs`, `servers`, `posting`, `tcpproxy`: real `downloader` processes, file and callback
  servers, a job poster, a stallable TCP relay (integration, aws, kafka, sentinel, chaos,
  images, k8s, ui; the top conftest's fixtures);
- `moto_server` (tests/aws), `kafka_broker` (tests/kafka; its jars from tests/kafka/pom.xml),
  `sentinel_cluster` and `sentinel_load` (tests/sentinel), `chaos` (tests/chaos);
- `chart_rendering`, `chart_manifests`, `helm` (tests/chart; helm also for tests/k8s);
- `podman_images` (tests/images/build.sh; tests/images and tests/k8s), `kubetools`
  (tests/k8s), `node` and `pause_image` (the real node of tests/node, started by tests/k8s).

The control plane that the k8s tests and bench/operator_bench.py both start is not here but
in tools/testbed (`testbed.controlplane`): benchmarks import no test code.
"""
