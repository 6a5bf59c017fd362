"""A Ray cluster of several nodes on this one machine (`ray.cluster_utils.Cluster`),
for tests and benchmarks: it runs in a child process, so it starts while the
caller does something else (its own `ray.init()`), and it shuts down when
`close()` is called or when the caller dies (the child sees its stdin close).
"""

from __future__ import annotations

import subprocess
import sys

_SCRIPT = """
import sys
from ray.cluster_utils import Cluster
nodes, cpus = int(sys.argv[1]), float(sys.argv[2])
cluster = Cluster(initialize_head=True, connect=False, head_node_args={"num_cpus": cpus, "include_dashboard": False,
                  "_system_config": {"worker_niceness": 0}})  # the boards at the driver's priority, as a fleet's own instance
try:
    for _ in range(nodes - 1):
        cluster.add_node(num_cpus=cpus)
    cluster.wait_for_nodes()
    print(cluster.address, flush=True)
    sys.stdin.read()
finally:
    cluster.shutdown()
"""


class LocalCluster:
    """`nodes` Ray nodes of `cpus` CPUs each; `address()` waits until they are up.
    `env`: the environment a driver must join with (Ray's auth mode is in it)."""

    def __init__(self, nodes: int = 2, cpus: float = 1, env: dict | None = None):
        self.env = env
        self.proc = subprocess.Popen([sys.executable, "-c", _SCRIPT, str(nodes), str(cpus)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
        self._address: str | None = None

    def address(self) -> str:
        if self._address is None:
            self._address = self.proc.stdout.readline().strip()
            if not self._address:
                raise RuntimeError(f"the local Ray cluster did not start (exit {self.proc.wait()})")
        return self._address

    def close(self, timeout: float = 60.0) -> None:
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self) -> LocalCluster:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
