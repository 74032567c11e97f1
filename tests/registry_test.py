"""Tests for aanets_tf.hosts.registry: the one list of hosts, read without a framework."""

import dataclasses
import subprocess
import sys

import pytest

from aanets_tf import config as config_lib
from aanets_tf.config import TrainConfig
from aanets_tf.hosts import registry
from support import REPO_ROOT


def test_registry_config_and_console_import_without_a_framework():
    code = ("import sys; import aanets_tf.hosts.registry, aanets_tf.config, tools.console; "
            "from aanets_tf.config import TrainConfig; "
            "tools.console.setting_summary(TrainConfig(host='podnet')); "
            "sys.exit('tensorflow' in sys.modules or 'keras' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT).returncode == 0


def test_config_reads_the_registry():
    assert config_lib.HOSTS == registry.HOSTS == tuple(e.name for e in registry.ENTRIES)
    assert config_lib.HOST_NAMES is registry.HOST_NAMES
    assert config_lib.HOST_HEADLINES is registry.HOST_HEADLINES
    assert config_lib.HOST_OPTIONS is registry.HOST_OPTIONS
    # Tables list the hosts in the paper's order.
    assert registry.HOSTS == ("icarl", "lucir", "podnet")


def test_entries_name_settings_that_exist_and_belong_to_one_host():
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    owned = [name for e in registry.ENTRIES for name in e.options]
    assert set(owned) <= fields
    assert len(owned) == len(set(owned))
    for e in registry.ENTRIES:
        assert e.headline in ("cnn", "nme")
        assert e.display_name and e.phase0_family


def test_each_entry_loads_its_host():
    from aanets_tf.hosts import host_for
    from aanets_tf.hosts.host import Host

    for e in registry.ENTRIES:
        cls = e.load()
        assert issubclass(cls, Host) and cls.name == e.name
        host = host_for(TrainConfig(host=e.name))
        assert type(host) is cls
        assert (host.headline, host.phase0) == (e.headline, e.phase0_family)


def test_unknown_host_is_refused():
    with pytest.raises(ValueError, match=r"Unknown host\. Expected one of .*host='der'"):
        registry.entry("der")
