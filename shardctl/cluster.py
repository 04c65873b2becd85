"""The library object every command starts from: a topology, its engines and credentials."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from shardctl import catalog, fence, health, topology, verify
from shardctl import credentials as creds
from shardctl.credentials import Credentials
from shardctl.engine import Engines
from shardctl.provisioning import DownReport, Provisioner, Reporter, UpReport, quiet_reporter
from shardctl.topology import HealthSpec, Topology


@dataclass
class Cluster:
    """A declared cluster and the means to reach it."""

    topology: Topology
    engines: Engines = field(default_factory=Engines)
    _credentials: Credentials | None = None

    @classmethod
    def load(cls, path: Path | str | None = None) -> Cluster:
        """Read and validate the topology; nothing is contacted yet."""
        return cls(topology.load(path))

    def credentials(self, *, create: bool = False) -> Credentials:
        """The cluster's passwords (generated and stored on first ``up``)."""
        if self._credentials is None:
            self._credentials = creds.load(self.topology, create=create)
        return self._credentials

    def provisioner(
        self, reporter: Reporter = quiet_reporter, *, create: bool = False
    ) -> Provisioner:
        """A provisioner for this cluster."""
        return Provisioner(self.topology, self.engines, self.credentials(create=create), reporter)

    def up(
        self, *, wait: bool = True, timeout: float = 180.0, reporter: Reporter = quiet_reporter
    ) -> UpReport:
        """Create or repair every declared node, then the ring catalog and the reshard fence on
        every primary."""
        started = time.monotonic()
        report = self.provisioner(reporter, create=True).up(wait=wait, timeout=timeout)
        reporter("catalog", "ring catalog")
        written = catalog.ensure(self.topology, self.credentials())
        report.warnings += written.warnings
        fence.ensure(self.topology, self.credentials())  # the reshard fence, idle until used
        report.seconds = time.monotonic() - started
        return report

    def down(self, *, volumes: bool = False) -> DownReport:
        """Remove containers and network; volumes (and generated passwords) only when asked."""
        report = Provisioner(self.topology, self.engines).down(volumes=volumes)
        if volumes:
            creds.forget(self.topology)
        return report

    def observe(self, *, timeout: float | None = None) -> health.ClusterFacts:
        """Every node's replication facts, probed in parallel."""
        return health.observe(self.topology, self.engines, self.credentials, timeout=timeout)

    def verify_replication(
        self, limits: HealthSpec | None = None, *, deep: bool = False
    ) -> verify.Report:
        """Every replication check; thresholds from ``limits`` or the topology's health section."""
        limits = limits if limits is not None else self.topology.spec.health
        return verify.verify_replication(
            self.topology, self.engines, self.credentials, limits, deep=deep
        )

    def close(self) -> None:
        """Release Docker clients."""
        self.engines.close()

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
