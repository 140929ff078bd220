'use strict';
// What a worker reports on its channel is believed only while it is possible: forged or garbage
// counts (`K` accepted itself, `D` closed, `A`/`L` beyond what was sent) leave the primary's
// counters plausible, are warned about always, and the worker is replaced.
const { freePort, startFixture, stopAll, get, ipsOf } = require('./helpers');

jest.setTimeout(60000);
afterEach(stopAll);

const WARNING = 'sent a record it cannot have sent honestly';

describe.each([
  ['kernel', 'K', 4294967295, 120],
  ['primary', 'K', 1, 1],
  ['primary', 'D', 1000, 1],
  ['primary', 'A', 50000, 1],
])('dispatch %s: forged %s records (n = %d, %d of them)', (dispatch, tag, n, times) => {
  test('the counters stay plausible, the warning is always on, and the worker is replaced', async () => {
    const port = await freePort();
    const app = startFixture('cluster-app.js', { PORT: port, WORKERS: 2, DISPATCH: dispatch });
    await app.count('ready', 2);
    const [ip, ...others] = ipsOf(0, 2, 6);
    for (const other of others) expect((await get(port, other)).status).toBe(200);
    const before = (await app.statsWhen((s) => s.slots[0].accepted >= 5)).slots[0];
    const forger = await get(port, ip, `/forge?tag=${tag}&n=${n}&times=${times}`);
    expect(forger.status).toBe(200);
    const replaced = await app.next((e) => e.event === 'ready' && e.slot === 0 && e.pid !== forger.body.pid, 10000);
    await app.next((e) => e.event === 'exit' && e.pid === forger.body.pid, 10000);
    expect(app.stderr).toContain(WARNING);
    expect(app.stderr).toContain(`worker pid ${forger.body.pid}`);
    // The replacement serves the slot; the counts grew by what really happened (the forger's own
    // reports are ignored from its first impossible one on).
    expect((await get(port, ip)).body.pid).toBe(replaced.pid);
    const after = (await app.statsWhen((s) => s.slots[0].accepted >= before.accepted + 1)).slots[0];
    console.log(
      `forged ${times} x ${tag} ${n} (${dispatch}): slot 0 accepted ${before.accepted} -> ${after.accepted}, delivered ${before.delivered} -> ${after.delivered}`,
    );
    expect(after.accepted).toBeGreaterThanOrEqual(before.accepted);
    expect(after.accepted).toBeLessThan(before.accepted + 100);
    expect(after.delivered).toBeLessThanOrEqual(after.accepted);
    expect(after.delivered).toBeGreaterThanOrEqual(before.delivered);
  });
});
