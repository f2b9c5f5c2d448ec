"""The decision of rule-small-order-fee: pure functions on plain Python values, no
imports from the host, so that pytest runs their tests (tests/) as they are.

Money is integer minor units (cents): Python ints, never floats.
"""

DEFAULTS = {"threshold": 2000, "fee": 300}
"""The settings a config without keys gives."""


class ConfigError(ValueError):
    """A config key the rule cannot take; the message names it."""


def parse_settings(config):
    """Parses the rule's config, a list of (key, value) string pairs."""
    settings = dict(DEFAULTS)
    for key, value in config:
        try:
            amount = int(value.strip())
        except ValueError:
            raise ConfigError(
                f"config key `{key}`: expected an amount in minor units, got `{value}`"
            ) from None
        if amount < 0:
            raise ConfigError(f"config key `{key}` must not be negative")
        if key not in settings:
            known = ", ".join(DEFAULTS)
            raise ConfigError(f"unknown config key `{key}`; this rule knows: {known}")
        settings[key] = amount
    return settings


def decide(total, settings):
    """The surcharges for an order whose running total (after earlier rules) is `total`:
    a list of (label, amount) pairs, empty when the order pays none."""
    if total < settings["threshold"] and settings["fee"] > 0:
        return [("small order fee", settings["fee"])]
    return []
