'use strict';
// One worker process's life in the primary (lib/worker-process.js): the decisions, without
// processes. The lifecycle suites check the same behaviour end to end with real workers.
const { WorkerProcess } = require('../lib/worker-process');

const fork = (at = {}) => new WorkerProcess({ id: 1 }, { slot: 0, seq: 1, now: 0, ...at });

test('forked, handed over, ready, retiring, exited: each once, in order; whenReady settles true', async () => {
  const w = fork();
  expect(w.state).toBe('forked');
  expect(w.ready()).toBe(false); // a hello before its servers were handed over: impossible
  expect(w.handedOver()).toBe(true);
  expect(w.handedOver()).toBe(false); // a second `ready` notice sends no second channel
  expect(w.ready()).toBe(true);
  expect(w.isReady).toBe(true);
  expect(w.ready()).toBe(false);
  expect(w.retire()).toBe(true);
  expect(w.retire()).toBe(false); // retired twice (drained, then shut down): asked once
  expect(w.handedOver()).toBe(false); // a late notice of a retired worker: no channel
  expect(w.exited()).toBe(true);
  expect(w.exited()).toBe(false);
  expect(w.state).toBe('exited');
  await expect(w.whenReady).resolves.toBe(true);
});

test('a worker that exits before it is ready settles whenReady false', async () => {
  const w = fork();
  w.handedOver();
  expect(w.exited()).toBe(true);
  await expect(w.whenReady).resolves.toBe(false);
});

test('setupMaster: an adopted worker has no slot until placed, and is placed once', () => {
  const w = new WorkerProcess({ id: 2 }, { slot: null, seq: 2, now: 0, adopted: true });
  expect(w.state).toBe('unplaced');
  expect(w.handedOver()).toBe(false);
  expect(w.placed(3)).toBe(true);
  expect(w.slot).toBe(3);
  expect(w.placed(4)).toBe(false);
  expect(w.slot).toBe(3);
  expect(w.handedOver()).toBe(true);
});

test('which exits were asked for', () => {
  const asked = (setup, code, signal) => {
    const w = fork();
    setup(w);
    w.exited();
    return w.exitAsked(code, signal);
  };
  const noNotice = () => {};
  const notice = (w) => w.stopping(0, false); // closed its server
  const retired = (w) => w.retire();
  expect(asked(notice, 0, null)).toBe(true); // closed its server, or its own signal
  expect(asked(notice, 1, null)).toBe(false); // ...but then failed
  expect(asked(noNotice, 0, null)).toBe(false); // process.exit(0) out of the blue
  expect(asked(noNotice, 1, null)).toBe(false);
  expect(asked(noNotice, null, 'SIGTERM')).toBe(true); // before its handlers were set up
  expect(asked(noNotice, null, 'SIGINT')).toBe(true);
  expect(asked(noNotice, null, 'SIGKILL')).toBe(false); // readyTimeout, the OOM killer
  expect(asked(noNotice, null, 'SIGSEGV')).toBe(false);
  expect(asked(retired, null, 'SIGKILL')).toBe(true); // hardShutdownDelay after a retire
});

test('an asked-for exit by a signal is held until the primary could have got its own Ctrl-C', () => {
  const w = fork();
  expect(w.holdAfterExit(false, 'SIGINT', 1000, 100)).toBe(0); // a crash: acted on at once
  expect(w.holdAfterExit(true, null, 1000, 100)).toBe(0); // closed its server: at once
  expect(w.holdAfterExit(true, 'SIGINT', 1000, 100)).toBe(100);
  w.stopping(950, true); // its `stopping` notice came 50 ms earlier
  expect(w.holdAfterExit(true, null, 1000, 100)).toBe(50);
});
