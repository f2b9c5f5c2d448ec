// Unit tests of the decision, run by node itself: `npm test`.
import assert from 'node:assert/strict';
import { test } from 'node:test';

import { DEFAULTS, decide, parseSettings } from '../src/decide.js';

const order = { id: 'o-1', customerId: '', currency: 'EUR', lines: [], shippingCountry: '', couponCodes: [], attributes: [] };
const context = (total) => ({
  totals: { subtotal: total, discounts: 0n, surcharges: 0n, tax: 0n, total },
  adjustments: [],
});

test('small orders pay the fee', () => {
  const outcome = decide(order, context(1999n), DEFAULTS);
  assert.equal(outcome.tag, 'accept');
  assert.deepEqual(outcome.val, [{ kind: 'surcharge', label: 'small order fee', amount: 300n }]);
  assert.deepEqual(decide(order, context(2000n), DEFAULTS), { tag: 'accept', val: [] });
});

test('a zero fee adds nothing', () => {
  const settings = parseSettings([['fee', '0']]);
  assert.deepEqual(decide(order, context(1n), settings), { tag: 'accept', val: [] });
});

test('config errors name the key', () => {
  assert.deepEqual(parseSettings([['threshold', '1000'], ['fee', ' 250 ']]), { threshold: 1000n, fee: 250n });
  assert.throws(() => parseSettings([['fee', 'lots']]), /`fee`/);
  assert.throws(() => parseSettings([['fee', '-1']]), /must not be negative/);
  assert.throws(() => parseSettings([['fees', '1']]), /unknown config key `fees`/);
});
