"""Class-incremental host methods (LUCIR, iCaRL, PODNet) and their building blocks.

`host_for(config)` returns the configured `Host` (`aanets_tf.hosts.host`); the
hosts themselves are listed in `aanets_tf.hosts.registry`, which reads without a
framework. Importing this package imports no framework either.
"""

from __future__ import annotations


def host_for(config):
    """The `Host` named by `config.host`."""
    from aanets_tf.hosts import registry

    return registry.entry(config.host).load()(config)
