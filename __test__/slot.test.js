'use strict';
// One slot's life (lib/slot.js): the decisions, without processes. The lifecycle suites check
// the same behaviour end to end with real workers.
const { Slot } = require('../lib/slot');

const policy = { respawnDelay: 100, maxRespawnDelay: 1000, respawnResetAfter: 30000, maxRestarts: 3, restartWindow: 60000 };
const worker = (bornAt = 0) => ({ bornAt, isReady: false });

test('starting, then ready once its own worker says hello; a hello of another worker changes nothing', () => {
  const slot = new Slot(0, policy);
  const w = worker();
  slot.forked(w);
  expect(slot.state).toBe('starting');
  expect(slot.ready(worker())).toBe(false);
  expect(slot.state).toBe('starting');
  expect(slot.ready(w)).toBe(true);
  expect(slot.state).toBe('ready');
});

test('a crash loop backs off 100, 200, 400, 800, 1000 ms; a long life resets the back-off', () => {
  const slot = new Slot(0, { ...policy, maxRestarts: Infinity });
  const delays = [];
  let now = 0;
  for (let i = 0; i < 5; i++) {
    const w = worker(now);
    slot.forked(w);
    now += 10;
    const next = slot.exited(w, now);
    expect(next.action).toBe('respawn');
    expect(slot.state).toBe('backoff');
    delays.push(next.delay);
  }
  expect(delays).toEqual([100, 200, 400, 800, 1000]);
  const old = worker(now);
  slot.forked(old);
  expect(slot.exited(old, now + 30000).delay).toBe(100);
});

test('more than maxRestarts exits within restartWindow give up; older exits fall out of the window', () => {
  const slot = new Slot(0, policy);
  let now = 0;
  const crash = () => {
    const w = worker(now);
    slot.forked(w);
    now += 1000;
    return slot.exited(w, now);
  };
  expect([crash(), crash(), crash()].map((n) => n.action)).toEqual(['respawn', 'respawn', 'respawn']);
  now += 60000; // the three are out of the window now
  expect(crash().action).toBe('respawn');
  expect(crash().action).toBe('respawn');
  expect(crash().action).toBe('respawn');
  const last = crash();
  expect(last).toMatchObject({ action: 'give-up', exits: 4 });
  expect(slot.restarts).toBe(7);
});

test('a reload: the replacement serves once ready and the old worker is returned to retire; its exit changes nothing', () => {
  const slot = new Slot(0, policy);
  const old = worker();
  slot.forked(old);
  slot.ready(old);
  expect(slot.replaceStarted()).toBe(true);
  expect(slot.replaceStarted()).toBe(false); // one at a time
  expect(slot.state).toBe('replacing');
  const next = worker(5);
  expect(slot.ready(next)).toBe(false); // not the slot's yet
  expect(slot.replaced(next)).toBe(old);
  expect(slot.state).toBe('ready');
  expect(slot.exited(old, 100)).toEqual({ action: 'nothing' });
  expect(slot.replaceEnded()).toBe(false);
  expect(slot.restarts).toBe(0);
});

test('the current worker dies during a replacement: the replacement takes the slot, or a respawn if it fails too', () => {
  const slot = new Slot(0, policy);
  const old = worker();
  slot.forked(old);
  old.isReady = slot.ready(old);
  slot.replaceStarted();
  expect(slot.exited(old, 50).action).toBe('replacement');
  expect(slot.current).toBe(null);
  expect(slot.replaceEnded()).toBe(true); // the replacement failed: nobody serves the slot
  expect(slot.state).toBe('backoff');
});

test('a failed replacement leaves the old worker serving', () => {
  const slot = new Slot(0, policy);
  const old = worker();
  slot.forked(old);
  old.isReady = slot.ready(old);
  slot.replaceStarted();
  expect(slot.replaceEnded()).toBe(false);
  expect(slot.state).toBe('ready');
  expect(slot.current).toBe(old);
});

test('closed: exits change nothing and no replacement starts', () => {
  const slot = new Slot(0, policy);
  const w = worker();
  slot.forked(w);
  slot.close();
  expect(slot.exited(w, 10)).toEqual({ action: 'nothing' });
  expect(slot.replaceStarted()).toBe(false);
  expect(slot.state).toBe('closed');
});

test('a worker asked to go (signal, server.close(), retire) is not counted: replaced at once, or by the replacement under way', () => {
  const slot = new Slot(0, { ...policy, maxRestarts: 3 });
  for (let i = 0; i < 30; i++) {
    const w = worker(i * 10);
    slot.forked(w);
    w.isReady = slot.ready(w);
    if (i % 2) {
      expect(slot.replaceStarted()).toBe(true);
      expect(slot.exited(w, i * 10 + 5, true)).toMatchObject({ action: 'replacement', asked: true });
      const next = worker(i * 10 + 6);
      expect(slot.replaced(next)).toBe(null);
      slot.exited(next, i * 10 + 7, true);
    } else {
      expect(slot.exited(w, i * 10 + 5, true)).toMatchObject({ action: 'respawn', delay: 0, asked: true });
      expect(slot.state).toBe('backoff');
    }
  }
  expect(slot.restarts).toBe(0);
  expect(slot.exits).toEqual([]);
  // The back-off of real crashes is untouched by them.
  const w = worker(1000);
  slot.forked(w);
  expect(slot.exited(w, 1010)).toMatchObject({ action: 'respawn', delay: 100 });
  expect(slot.restarts).toBe(1);
});

test('kernel dispatch: a service that never had a ready worker gives up after min(queueTimeout, readyTimeout); one that served, or maxRestarts Infinity, does not', () => {
  const p = { ...policy, queueTimeout: 2000, readyTimeout: 5000, dispatch: 'kernel' };
  // The router times waiting clients out itself (queueTimeout): maxRestarts decides there.
  expect(Slot.givesUpNeverReady({ ...p, dispatch: 'primary' }, { startedAt: 0, now: 60000, anyReady: false })).toBe(false);
  expect(Slot.givesUpNeverReady(p, { startedAt: 0, now: 1999, anyReady: false })).toBe(false);
  expect(Slot.givesUpNeverReady(p, { startedAt: 0, now: 2000, anyReady: false })).toBe(true);
  expect(Slot.givesUpNeverReady({ ...p, readyTimeout: 1000 }, { startedAt: 0, now: 1000, anyReady: false })).toBe(true);
  expect(Slot.givesUpNeverReady(p, { startedAt: 0, now: 60000, anyReady: true })).toBe(false);
  expect(Slot.givesUpNeverReady({ ...p, maxRestarts: Infinity }, { startedAt: 0, now: 60000, anyReady: false })).toBe(false);
});
