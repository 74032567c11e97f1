"""Class-incremental host methods (LUCIR, iCaRL, PODNet) and their building blocks.

`host_for(config)` returns the configured `Host` (`aanets_tf.hosts.host`).
"""

from __future__ import annotations


def host_for(config):
    """The `Host` named by `config.host`."""
    from aanets_tf.hosts.icarl import Icarl
    from aanets_tf.hosts.lucir import Lucir
    from aanets_tf.hosts.podnet import Podnet

    hosts = {h.name: h for h in (Lucir, Icarl, Podnet)}
    if config.host not in hosts:
        raise ValueError(f"Unknown host. Expected one of {sorted(hosts)}. "
                         f"Received: host={config.host!r}")
    return hosts[config.host](config)
