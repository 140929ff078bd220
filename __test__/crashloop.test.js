'use strict';
// A crash loop must not cost the primary descriptors: every handle it sends a worker (its
// listeners' members, its channel) is closed even when the worker dies before taking it.
const { freePort, startFixture, stopAll } = require('./helpers');

jest.setTimeout(60000);
afterEach(stopAll);

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** The smallest of three fd counts of the primary, 100 ms apart (a fork in progress holds a few). */
async function fds(app) {
  const counts = [];
  for (let i = 0; i < 3; i++) {
    counts.push(app.fdCount());
    await sleep(100);
  }
  return Math.min(...counts);
}

describe.each(['kernel', 'primary'])('dispatch %s', (dispatch) => {
  test("the primary's descriptors stay flat during a crash loop (maxRestarts: Infinity)", async () => {
    const port = await freePort();
    const app = startFixture('cluster-app.js', {
      PORT: port,
      WORKERS: 3,
      DISPATCH: dispatch,
      // Slots 0 and 1 die within 5 ms of handing over: often while the primary sends them their
      // listeners and channel, one handle at a time.
      CRASH_SLOT_AFTER_HANDOVER: '0,1',
      CRASH_AFTER_HANDOVER_MS: 5,
      RESPAWN_DELAY: 10,
      MAX_RESPAWN_DELAY: 20,
      MAX_RESTARTS: 'Infinity',
    });
    await app.next((e) => e.event === 'ready' && e.slot === 2);
    // Warmed up: a few rounds of the loop.
    await app.count('exit', 5);
    const before = await fds(app);
    const exitsBefore = app.events.filter((e) => e.event === 'exit').length;
    await sleep(20000);
    const after = await fds(app);
    const exits = app.events.filter((e) => e.event === 'exit').length - exitsBefore;
    console.log(`crash loop (${dispatch}): ${exits} exits in 20 s, primary fds ${before} -> ${after}`);
    expect(exits).toBeGreaterThan(40);
    expect(after - before).toBeLessThan(8);
  });
});
