'use strict';
// A crash loop must not cost the primary descriptors: every handle it sends a worker (its
// listeners' members, its channel) is closed even when the worker dies before taking it.
const { processes, sleep, freePort, startFixture, startOpsApp, stopAll } = require('./helpers');

jest.setTimeout(60000);
afterEach(stopAll);

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
    const started = Date.now();
    // 60 more crashes, each often mid-hand-over: a leak of one handle per crash would show as ~60.
    await app.count('exit', exitsBefore + 60, 40000);
    const after = await fds(app);
    const exits = app.events.filter((e) => e.event === 'exit').length - exitsBefore;
    console.log(`crash loop (${dispatch}): ${exits} exits in ${Date.now() - started} ms, primary fds ${before} -> ${after}`);
    expect(after - before).toBeLessThan(8);
  });
});

/** The live child processes of `pid` (zombies excluded). */
function childrenOf(pid) {
  return processes()
    .filter((p) => p.ppid === pid && p.state !== 'Z')
    .map((p) => p.pid);
}

test.each(['sticky', 'listen'])(
  "%s(): a leftover cluster.on('exit', () => cluster.fork()) adds no idle worker per crash, and is not fed",
  async (api) => {
    const port = await freePort();
    const app = startOpsApp(api, port, {}, { LEFTOVER_FORK: '1' });
    await app.count('ready', 2);
    // Our 2 workers and the stray the fixture forked itself at start.
    const start = childrenOf(app.child.pid).length;
    const seen = new Set(app.events.filter((e) => e.event === 'ready').map((e) => e.pid));
    for (let kill = 0; kill < 6; kill++) {
      const { pid } = (await app.stats()).slots[kill % 2];
      process.kill(pid, 'SIGKILL');
      const { pid: next } = await app.next((e) => e.event === 'ready' && e.slot === kill % 2 && !seen.has(e.pid));
      seen.add(next);
    }
    // Nothing forks any more: the same processes a second apart.
    let children = childrenOf(app.child.pid);
    for (const deadline = Date.now() + 5000; Date.now() < deadline; children = childrenOf(app.child.pid)) {
      await sleep(1000);
      if (JSON.stringify(childrenOf(app.child.pid)) === JSON.stringify(children)) break;
    }
    console.log(`${api}(): after 6 kills with a leftover exit handler: ${children.length} child processes (${start} at start)`);
    expect(children.length).toBe(start);
    expect(JSON.stringify(childrenOf(app.child.pid))).toBe(JSON.stringify(children));
    expect(app.stderr).toMatch(/warning: ended worker pid \d+.*: a cluster 'exit' listener forked it when worker pid \d+ exited/);
    app.child.kill('SIGTERM');
    expect(await app.exited).toEqual({ code: 0, signal: null });
    expect(app.stderr).not.toMatch(/EPIPE|Error:| {4}at /);
  },
);
