// rule-small-order-fee as a component of the `rule` world (wit/rule.wit), built by
// componentize-js: `npm run build`. The exports below are the world's functions; the
// decision itself is in decide.js.
import { log } from 'order:rules/log@0.1.0';

import { DEFAULTS, decide, parseSettings } from './decide.js';

let settings = DEFAULTS;

/** Name, version and description of this rule (the name is unique within a ruleset). */
export function describe() {
  return {
    name: 'rule-small-order-fee',
    version: '0.1.0',
    description: 'Adds a handling surcharge to orders whose total is below a threshold.',
  };
}

/** Takes the config; a thrown string is the `err` the host reports. */
export function configure(config) {
  settings = parseSettings(config);
  log('debug', `configured: threshold=${settings.threshold} fee=${settings.fee}`);
}

/** Decides about one order. */
export function evaluate(order, context) {
  return decide(order, context, settings);
}
