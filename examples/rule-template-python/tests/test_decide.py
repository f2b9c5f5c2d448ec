"""Unit tests of the decision: `pytest`."""

import pytest

from decide import DEFAULTS, ConfigError, decide, parse_settings


def test_small_orders_pay_the_fee():
    assert decide(1999, DEFAULTS) == [("small order fee", 300)]
    assert decide(2000, DEFAULTS) == []


def test_a_zero_fee_adds_nothing():
    assert decide(1, parse_settings([("fee", "0")])) == []


def test_config_errors_name_the_key():
    assert parse_settings([("threshold", "1000"), ("fee", " 250 ")]) == {"threshold": 1000, "fee": 250}
    with pytest.raises(ConfigError, match="`fee`"):
        parse_settings([("fee", "lots")])
    with pytest.raises(ConfigError, match="must not be negative"):
        parse_settings([("fee", "-1")])
    with pytest.raises(ConfigError, match="unknown config key `fees`"):
        parse_settings([("fees", "1")])
