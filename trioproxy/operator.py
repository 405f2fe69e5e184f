"""The operator side of a running proxy: the operator tables (``[db]``), the authentication service the
``KSR.auth*`` and ``KSR.permissions`` modules use (``[auth]``), and its Prometheus metrics.

``OperatorRuntime.start(config)`` opens and migrates the database (when ``db.url`` is set), makes the
service current for the proxy's tasks and adds the metric source; ``run`` keeps the tables fresh;
``close`` undoes the rest.
"""

from __future__ import annotations

from collections.abc import Iterable

from trioproxy.auth import FailureCounts, NonceCounts, Nonces
from trioproxy.config import Config
from trioproxy.db import OperatorTables
from trioproxy.mgmt import MetricFamily, Sample
from trioproxy.mgmt.metrics import add_metric_source
from trioproxy.routing.auth_service import AuthService, set_auth_service

__all__ = ["OperatorRuntime", "auth_metric_families"]


def auth_metric_families(failures: FailureCounts) -> Iterable[MetricFamily]:
    """Failed digest authentications: by reason, by source address and by user (bounded label sets)."""
    yield MetricFamily(
        "trioproxy_auth_failures", "counter", "Failed digest authentications, by reason",
        [Sample(v, {"reason": k}) for k, v in sorted(failures.by_reason.items())],
    )  # fmt: skip
    yield MetricFamily(
        "trioproxy_auth_failures_by_source", "counter",
        "Failed digest authentications by source IP (the most recently failing sources)",
        [Sample(v, {"source": k}) for k, v in failures.by_source.items()],
    )  # fmt: skip
    yield MetricFamily(
        "trioproxy_auth_failures_by_user", "counter",
        "Failed digest authentications by user@realm (the most recently failing users)",
        [Sample(v, {"user": k}) for k, v in failures.by_user.items()],
    )  # fmt: skip


class OperatorRuntime:
    """Operator tables and authentication of one ``serve()``."""

    def __init__(self, service: AuthService, tables: OperatorTables | None, interval: float) -> None:
        self.service = service
        self.tables = tables
        self.interval = interval
        self._remove_metrics = add_metric_source(lambda: auth_metric_families(service.failures))

    @classmethod
    def start(cls, config: Config) -> OperatorRuntime:
        """Open the tables (raises ``trioproxy.db.SchemaError``) and make the service current."""
        tables = OperatorTables.open_sync(config.db.url) if config.db.url else None
        secret = config.auth.secret.encode() or None
        service = AuthService(
            tables=tables,
            nonces=Nonces(secret, expires=config.auth.nonce_expires),
            counts=NonceCounts(config.auth.nonce_count_memory),
            algorithms=tuple(config.auth.algorithms),
        )
        # serve() runs in its own trio.run: the context it sets is the proxy's and goes with it.
        set_auth_service(service)
        return cls(service, tables, config.db.refresh_interval)

    async def run(self) -> None:
        """Keep the tables fresh (returns at once without a database)."""
        if self.tables is not None:
            await self.tables.watch(self.interval)

    def close(self) -> None:
        """Remove the metric source and close the database."""
        self._remove_metrics()
        if self.tables is not None:
            self.tables.close()
