"""The CDDL fragment in firmware/config.py's docstring is valid CDDL and describes exactly what
dump_config writes (checked with pycddl), so the documentation cannot drift from the code."""
import os
import sys

import pycddl
import pytest

import firmware.config as config_mod
import firmware.config_check as check_mod
from protocol import cbor

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "device"))
import test_config as samples  # noqa: E402 - the device test's sample configs


def _schema():
    doc = config_mod.__doc__
    start = doc.index("    node-config = {")
    return pycddl.Schema("\n".join(line[4:] for line in doc[start:].splitlines()))


def test_dumped_configs_match_the_cddl():
    schema = _schema()
    for d in (samples.node_cfg(), samples.gw_cfg(), samples.sim_cfg()):
        schema.validate_cbor(check_mod.dump_config(d))


@pytest.mark.parametrize("key,value", [("node_key", b"\x01" * 31), ("role", "relay"), ("radio_channel", 0),
                                       ("config_version", 2)])
def test_cddl_rejects_what_validate_rejects(key, value):
    d = check_mod.validate(samples.node_cfg())
    d[key] = value
    with pytest.raises(check_mod.ConfigError):
        check_mod.validate(d)
    with pytest.raises(Exception):  # noqa: B017 - pycddl raises its own ValidationError
        _schema().validate_cbor(cbor.dumps(d))
