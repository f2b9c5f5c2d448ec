// The decision of rule-small-order-fee: pure functions, no imports from the host, so
// that node runs their unit tests (test/decide.test.js) as they are.
//
// Money is integer minor units (cents). The WIT type s64 arrives and leaves as a BigInt:
// write amounts as 300n, never as floats.

/** The settings a config without keys gives. */
export const DEFAULTS = Object.freeze({ threshold: 2000n, fee: 300n });

/**
 * Parses the rule's config: a list of [key, value] string pairs. Throws a message that
 * names the key on an unknown key or a bad value (the host shows it to the operator).
 */
export function parseSettings(config) {
  const settings = { ...DEFAULTS };
  for (const [key, value] of config) {
    if (!/^\s*-?\d+\s*$/.test(value)) {
      throw `config key \`${key}\`: expected an amount in minor units, got \`${value}\``;
    }
    const amount = BigInt(value.trim());
    if (amount < 0n) {
      throw `config key \`${key}\` must not be negative`;
    }
    if (!(key in DEFAULTS)) {
      throw `unknown config key \`${key}\`; this rule knows: ${Object.keys(DEFAULTS).join(', ')}`;
    }
    settings[key] = amount;
  }
  return settings;
}

/**
 * Decides about one order: a `fee` surcharge when the running total (after earlier
 * rules) is below `threshold`. Returns the WIT `outcome` as jco represents it: a
 * variant is `{ tag, val }`, an enum a kebab-case string.
 */
export function decide(order, context, settings) {
  if (context.totals.total < settings.threshold && settings.fee > 0n) {
    return {
      tag: 'accept',
      val: [{ kind: 'surcharge', label: 'small order fee', amount: settings.fee }],
    };
  }
  return { tag: 'accept', val: [] };
}
