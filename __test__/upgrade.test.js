'use strict';
// Issue 22: upgrading the whole server (a new primary with new app code takes over the listening
// sockets) under continuous load from 240 client addresses: nothing refused, reset or failed,
// every client on its slot throughout, each old primary exits 0, the pid file names the current
// primary, systemd's NOTIFY_SOCKET hears MAINPID and READY; a broken version changes nothing.
// Real processes; DISPATCH=primary runs the router instead of kernel dispatch.
const { spawn } = require('node:child_process');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { processes, freePort, clientIp, startFixture, stopAll, get, slotOf, alive, range, sleep, until } = require('./helpers');

jest.setTimeout(120000);

const DISPATCH = process.env.DISPATCH || undefined;
const WORKERS = 2;
const IPS = range(240).map(clientIp);
const cleanups = [];

afterEach(async () => {
  await stopAll();
  for (const f of cleanups.splice(0)) f();
});

/** A directory with the app's module (rewritten between upgrades) and its pid file. */
function workdir() {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'sticky-rs-upgrade-'));
  cleanups.push(() => fs.rmSync(dir, { recursive: true, force: true }));
  const module = path.join(dir, 'app.js');
  const write = (fields) => fs.writeFileSync(module, `module.exports = ${JSON.stringify(fields)};\n`);
  return { dir, module, pidFile: path.join(dir, 'app.pid'), write };
}

/** The upgrade fixture on `port` with the app module of workdir `w`, in this run's dispatch mode. */
function startUpgradeApp(port, w, env = {}) {
  return startFixture('upgrade-app.js', { PORT: port, WORKERS, DISPATCH, APP_MODULE: w.module, ...env });
}

/** Every live process in the fixture's process group (the first primary's pid is its id). */
function groupMembers(pgid) {
  return processes()
    .filter((p) => p.pgid === pgid && p.state !== 'Z')
    .map((p) => p.pid);
}

/**
 * Requests from IPS, 16 at a time, each on a new connection, until stop(). Records per
 * address the slots that answered, and every failure by kind.
 */
function load(port) {
  let running = true;
  const answers = [];
  const failures = [];
  const slots = new Map();
  const loops = Array.from({ length: 16 }, async (_, k) => {
    for (let i = k; running; i += 16) {
      const ip = IPS[i % IPS.length];
      try {
        const r = await get(port, ip, '/', { timeout: 10000 });
        if (r.status !== 200) throw new Error(`status ${r.status}`);
        answers.push({ at: Date.now(), ip, ...r.body });
        if (!slots.has(ip)) slots.set(ip, new Set());
        slots.get(ip).add(r.body.slot);
      } catch (err) {
        failures.push({ ip, error: err.code || err.message });
      }
    }
  });
  return {
    answers,
    failures,
    slots,
    async stop() {
      running = false;
      await Promise.all(loops);
    },
  };
}

/** A fake systemd: a Unix datagram socket (python3) that prints each message as a JSON line. */
function notifyReceiver(dir) {
  const socket = path.join(dir, 'notify.sock');
  const script =
    'import socket,sys,json\ns=socket.socket(socket.AF_UNIX,socket.SOCK_DGRAM)\ns.bind(sys.argv[1])\nprint("bound",flush=True)\nwhile True:\n  print(json.dumps(s.recv(4096).decode()),flush=True)\n';
  const child = spawn('python3', ['-c', script, socket], { stdio: ['ignore', 'pipe', 'inherit'] });
  cleanups.push(() => child.kill('SIGKILL'));
  const messages = [];
  let buffered = '';
  let bound;
  const isBound = new Promise((r) => (bound = r));
  child.stdout.on('data', (d) => {
    buffered += d;
    const lines = buffered.split('\n');
    buffered = lines.pop();
    for (const line of lines) {
      if (line === 'bound') bound();
      else messages.push(JSON.parse(line));
    }
  });
  return { socket, messages, isBound };
}

test('3 upgrades in a row under load, new app code each time: 0 failed, every client on its slot, old primaries exit 0, pid file and NOTIFY_SOCKET follow', async () => {
  const port = await freePort();
  const w = workdir();
  w.write({ version: 1 });
  const notify = notifyReceiver(w.dir);
  await notify.isBound;
  const app = startUpgradeApp(port, w, {
    PID_FILE: w.pidFile,
    NOTIFY_SOCKET: notify.socket,
  });
  const pgid = app.child.pid;
  await app.count('ready', WORKERS);
  await until('the pid file', () => fs.existsSync(w.pidFile), 5000);
  expect(Number(fs.readFileSync(w.pidFile, 'utf8'))).toBe(pgid);
  const traffic = load(port);
  await sleep(500);
  const timings = [];
  let current = pgid;
  for (let version = 2; version <= 4; version++) {
    w.write({ version });
    const old = current;
    const asked = Date.now();
    process.kill(old, 'SIGUSR2');
    const took = await app.next((e) => e.event === 'takeover' && e.previous === old, 20000);
    current = took.pid;
    const exit = await app.next((e) => e.event === 'primary-exit' && e.pid === old, 20000);
    const exitedAt = Date.now();
    timings.push(exitedAt - asked);
    expect(exit.code).toBe(0);
    expect(took.stats.dispatch).toBe(DISPATCH === 'primary' ? 'primary' : 'kernel');
    // The inherited groups are whole: the old primary's checks paused while the new one probed.
    expect(took.stats.kernel.filter((k) => k.repairs > 0 || k.damage.length > 0)).toEqual([]);
    expect(Number(fs.readFileSync(w.pidFile, 'utf8'))).toBe(current);
    // The receiver relays what it got through its own pipe: it may come after the takeover event.
    await until('NOTIFY_SOCKET told the new pid', () => notify.messages.includes(`MAINPID=${current}\nREADY=1`), 5000);
    // 2 s after the old primary exited, every answer comes from the new code.
    await sleep(2500);
    const late = traffic.answers.filter((a) => a.at > exitedAt + 2000);
    expect(late.length).toBeGreaterThan(0);
    expect(late.filter((a) => a.version !== version || a.primary !== current)).toEqual([]);
  }
  await traffic.stop();
  const moved = [...traffic.slots.entries()].filter(([ip, s]) => s.size !== 1 || !s.has(slotOf(ip, WORKERS)));
  console.log(
    `upgrade (${DISPATCH || 'kernel'}): ${traffic.answers.length} requests from ${traffic.slots.size} addresses over 3 upgrades, ${traffic.failures.length} failed; trigger to old primary's exit ${timings.join(', ')} ms`,
  );
  expect(traffic.failures).toEqual([]);
  expect(traffic.slots.size).toBe(IPS.length);
  expect(moved).toEqual([]);
  // The final SIGTERM ends everything within 10 s, exit 0, nothing left in the process group.
  const stopped = Date.now();
  process.kill(current, 'SIGTERM');
  const last = await app.next((e) => e.event === 'primary-exit' && e.pid === current, 10000);
  expect(last.code).toBe(0);
  await until('no process left in the group', () => groupMembers(pgid).length === 0, 10000 - (Date.now() - stopped));
  expect(fs.existsSync(w.pidFile)).toBe(false);
});

test.each([
  ['its primary throws at start', { throwInPrimary: true }, /exited with code 1 before it was ready/],
  ['its workers never become ready', { stall: true }, /not ready on every slot within readyTimeout/],
])(
  'a broken new version (%s): the old primary keeps serving, 0 failed, says why, pid file unchanged, nothing stray',
  async (_, broken, why) => {
    const port = await freePort();
    const w = workdir();
    w.write({ version: 1 });
    const app = startUpgradeApp(port, w, {
      PID_FILE: w.pidFile,
      READY_TIMEOUT: 3000,
    });
    const pgid = app.child.pid;
    await app.count('ready', WORKERS);
    await until('the pid file', () => fs.existsSync(w.pidFile), 5000);
    const before = groupMembers(pgid).sort();
    const traffic = load(port);
    await sleep(300);
    w.write({ version: 2, ...broken });
    process.kill(pgid, 'SIGUSR2');
    // Repeated signals during the upgrade: one upgrade, the others are refused with a message.
    // Only while one is certainly under way: a new primary that throws at start can fail within
    // 100 ms (Node 26), and a signal after that is a new upgrade, as it should be.
    if (broken.stall) {
      await app.said(/SIGUSR2: upgrading/, 5000);
      process.kill(pgid, 'SIGUSR2');
    }
    await app.said(why, 15000);
    await until('the broken primary and its workers are gone', () => groupMembers(pgid).sort().join() === before.join(), 10000);
    await sleep(500);
    await traffic.stop();
    console.log(
      `broken upgrade (${DISPATCH || 'kernel'}, ${Object.keys(broken)[0]}): ${traffic.answers.length} requests, ${traffic.failures.length} failed`,
    );
    if (broken.stall) expect(app.stderr).toMatch(/upgrade refused: an upgrade is under way/);
    // Exactly one attempt, rolled back once.
    expect(app.stderr.match(/SIGUSR2: upgrading: starting a new primary/g)).toHaveLength(1);
    expect(app.events.filter((e) => e.event === 'listening').length).toBe(1 + (broken.stall ? 1 : 0));
    expect(traffic.failures).toEqual([]);
    expect(traffic.answers.every((a) => a.version === 1 && a.primary === pgid)).toBe(true);
    expect(Number(fs.readFileSync(w.pidFile, 'utf8'))).toBe(pgid);
    expect(alive(pgid)).toBe(true);
    // Still upgradable once fixed.
    w.write({ version: 3 });
    process.kill(pgid, 'SIGUSR2');
    const took = await app.next((e) => e.event === 'takeover' && e.previous === pgid, 20000);
    expect((await get(port, IPS[0])).body.version).toBe(3);
    process.kill(took.pid, 'SIGTERM');
    await app.next((e) => e.event === 'primary-exit' && e.pid === took.pid, 10000);
  },
);

/**
 * Socket.IO clients from distinct addresses, reconnecting on their own (as browsers do); each
 * records every 'hello' (one per connection: version, slot, worker, primary).
 */
function socketioClients(port, ips, transports) {
  const http = require('node:http');
  const { io } = require('socket.io-client');
  return ips.map((ip) => {
    const agent = new http.Agent({ localAddress: ip });
    const socket = io(`http://127.0.0.1:${port}`, {
      forceNew: true,
      agent,
      reconnectionDelay: 100,
      reconnectionDelayMax: 500,
      ...(transports ? { transports } : {}),
    });
    cleanups.push(() => {
      socket.disconnect();
      agent.destroy();
    });
    const client = { ip, socket, hellos: [], errors: [] };
    socket.on('hello', (h) => client.hellos.push(h));
    socket.on('connect_error', (err) => client.errors.push(err.message));
    return client;
  });
}

test.each([
  ['address', 'websocket', undefined, undefined],
  ['sid', 'websocket', 'sid', undefined],
  ['sid', 'polling', 'sid', ['polling']],
])(
  'Socket.IO clients through an upgrade (routeBy %s, %s): each reconnects once, to its slot when routing by address',
  async (_, __, routeBy, transports) => {
    const port = await freePort();
    const w = workdir();
    w.write({ version: 1 });
    const app = startUpgradeApp(port, w, {
      DISPATCH: routeBy ? undefined : DISPATCH,
      ROUTE_BY: routeBy,
      SOCKETIO: 1,
      PID_FILE: w.pidFile,
    });
    await app.count('ready', WORKERS);
    const clients = socketioClients(port, IPS.slice(0, 40), transports);
    await until('every client connected', () => clients.every((c) => c.hellos.length === 1), 15000);
    w.write({ version: 2 });
    process.kill(app.child.pid, 'SIGUSR2');
    const took = await app.next((e) => e.event === 'takeover', 20000);
    await until(
      'every client reconnected to the new primary',
      () => clients.every((c) => c.hellos.some((h) => h.primary === took.pid)),
      15000,
    );
    await sleep(1000);
    const reconnected = clients.filter((c) => c.hellos.length > 1).length;
    const sameSlot = clients.filter((c) => c.hellos[0].slot === c.hellos[c.hellos.length - 1].slot).length;
    const extra = clients.filter((c) => c.hellos.length > 2);
    console.log(
      `Socket.IO through an upgrade (routeBy ${routeBy || 'address'}, ${transports ? transports.join() : 'websocket'}, ${DISPATCH || 'auto'}): ${reconnected} of ${clients.length} clients had to reconnect (their old worker retired), ${sameSlot} on the same slot, ${extra.length} more than once, connect errors: ${clients.reduce((n, c) => n + c.errors.length, 0)}`,
    );
    expect(clients.every((c) => c.hellos[c.hellos.length - 1].version === 2)).toBe(true);
    expect(extra).toEqual([]);
    if (!routeBy) expect(sameSlot).toBe(clients.length);
    process.kill(took.pid, 'SIGTERM');
    await app.next((e) => e.event === 'primary-exit' && e.pid === took.pid, 10000);
  },
);

test('without upgradeSignal, nodemon (which restarts its child with SIGUSR2) restarts a sticky-rs app cleanly: no handler, no second primary', async () => {
  const port = await freePort();
  const w = workdir();
  w.write({ version: 1 });
  const run = startFixture('nodemon-run.js', { PORT: port, WORKERS, DISPATCH, APP_MODULE: w.module, WATCH_DIR: w.dir, UPGRADE_SIGNAL: '' });
  const pgid = run.child.pid;
  const first = await run.next((e) => e.event === 'listening', 20000);
  expect(first.upgradeHandlers).toBe(0);
  await run.count('ready', WORKERS);
  w.write({ version: 2 });
  const second = await run.next((e) => e.event === 'listening' && e.pid !== first.pid, 20000);
  await run.next((e) => e.event === 'ready' && e.primary === second.pid, 20000);
  await until(
    'both slots of the new primary ready',
    () => run.events.filter((e) => e.event === 'ready' && e.primary === second.pid).length === WORKERS,
    10000,
  );
  expect(alive(first.pid)).toBe(false);
  expect(run.events.filter((e) => e.event === 'error')).toEqual([]);
  const answers = await Promise.all(IPS.slice(0, 20).map((ip) => get(port, ip)));
  expect(answers.every((a) => a.body.version === 2 && a.body.primary === second.pid)).toBe(true);
  // nodemon, the new primary and its workers: nothing else in the group.
  await until('only the new primary and its workers besides nodemon', () => groupMembers(pgid).length === 1 + 1 + WORKERS, 5000);
});

test('primary.upgrade() resolves with the new pid; a second call during it is refused', async () => {
  const port = await freePort();
  const w = workdir();
  w.write({ version: 1 });
  const app = startUpgradeApp(port, w);
  await app.count('ready', WORKERS);
  w.write({ version: 2 });
  app.command('upgrade');
  const refused = await app.next((e) => e.event === 'upgrade-failed', 20000);
  expect(refused).toMatchObject({
    call: 2,
    message: expect.stringMatching(/upgrade refused: an upgrade is under way \(new primary pid \d+\)/),
  });
  const done = await app.next((e) => e.event === 'upgraded', 20000);
  const took = await app.next((e) => e.event === 'takeover', 20000);
  expect(done).toMatchObject({ call: 1, pid: took.pid });
  expect((await app.exited).code).toBe(0);
  expect((await get(port, IPS[0])).body).toMatchObject({ version: 2, primary: took.pid });
  process.kill(took.pid, 'SIGTERM');
  await app.next((e) => e.event === 'primary-exit' && e.pid === took.pid, 10000);
});

test('upgrade options are checked', () => {
  const sticky = require('..');
  const start = (options) => () => sticky(() => {}, { port: 1, ...options });
  expect(start({ upgradeSignal: 'SIGTERM' })).toThrow(
    /option "upgradeSignal" must be a signal name other than SIGINT, SIGTERM, SIGHUP, SIGKILL, SIGSTOP \(e.g. "SIGUSR2"\), got "SIGTERM"/,
  );
  expect(start({ upgradeSignal: 'SIGNOPE' })).toThrow(/option "upgradeSignal" must be a signal name/);
  expect(start({ upgradeSignal: 12 })).toThrow(/option "upgradeSignal" must be a string, got 12/);
  expect(start({ pidFile: {} })).toThrow(/option "pidFile" must be a string, got an object/);
  expect(start({ upgradeExecPath: true })).toThrow(/option "upgradeExecPath" must be a string, got true/);
});

test('upgradeExecPath picks the binary the new primary runs (resolved at upgrade time)', async () => {
  const port = await freePort();
  const w = workdir();
  w.write({ version: 1 });
  // A "new Node": a wrapper that marks its process, then runs this Node. The link is switched
  // to it after the start, as nvm or a deploy switches a symlink.
  const wrapper = path.join(w.dir, 'node-wrapper.sh');
  fs.writeFileSync(wrapper, `#!/bin/sh\nVIA_WRAPPER=1 exec "${process.execPath}" "$@"\n`, { mode: 0o755 });
  const link = path.join(w.dir, 'node');
  fs.symlinkSync(process.execPath, link);
  const app = startUpgradeApp(port, w, { UPGRADE_EXEC_PATH: link });
  const first = await app.next((e) => e.event === 'listening');
  expect(first.via).toBe(null);
  await app.count('ready', WORKERS);
  fs.unlinkSync(link);
  fs.symlinkSync(wrapper, link);
  process.kill(first.pid, 'SIGUSR2');
  const took = await app.next((e) => e.event === 'takeover', 20000);
  const second = app.events.find((e) => e.event === 'listening' && e.pid === took.pid);
  expect(second.via).toBe('1');
  process.kill(took.pid, 'SIGTERM');
  await app.next((e) => e.event === 'primary-exit' && e.pid === took.pid, 10000);
});

test('an upgradeExecPath that cannot run: the upgrade fails, said, the old primary keeps serving', async () => {
  const port = await freePort();
  const w = workdir();
  w.write({ version: 1 });
  const notExecutable = path.join(w.dir, 'not-node');
  fs.writeFileSync(notExecutable, 'not a program\n', { mode: 0o644 });
  const app = startUpgradeApp(port, w, { UPGRADE_EXEC_PATH: notExecutable });
  await app.count('ready', WORKERS);
  app.command('upgrade');
  const failed = await app.next((e) => e.event === 'upgrade-failed' && e.call === 1, 10000);
  expect(failed.message).toMatch(/upgrade failed: cannot start .*not-node: spawn .*EACCES/);
  // stderr and the event's stdout are separate pipes: the line may come after the event.
  await app.said(/upgrade failed: cannot start .*; this primary \(pid \d+\) keeps serving/);
  expect((await get(port, IPS[0])).body).toMatchObject({ version: 1, primary: app.child.pid });
  // And a later upgrade is not refused as "under way".
  app.command('upgrade');
  await until(
    'a second attempt fails the same way',
    () => app.events.filter((e) => e.event === 'upgrade-failed' && e.call === 1).length === 2,
    10000,
  );
});

test('SIGTERM to the old primary during an upgrade: the new one is ended too, everything exits within 10 s, nothing stray', async () => {
  const port = await freePort();
  const w = workdir();
  w.write({ version: 1 });
  const app = startUpgradeApp(port, w, {
    PID_FILE: w.pidFile,
    READY_TIMEOUT: 15000,
  });
  const pgid = app.child.pid;
  await app.count('ready', WORKERS);
  w.write({ version: 2, stall: true });
  process.kill(pgid, 'SIGUSR2');
  await app.next((e) => e.event === 'listening' && e.pid !== pgid, 10000);
  const stopped = Date.now();
  process.kill(pgid, 'SIGTERM');
  expect((await app.exited).code).toBe(0);
  // 'exit' can come before the last of stderr is read.
  await app.said(/upgrade failed: this primary is shutting down/);
  // The new primary included (a zombie once its parent exited: not counted, nothing runs).
  await until('no process left in the group', () => groupMembers(pgid).length === 0, 10000 - (Date.now() - stopped));
  expect(fs.existsSync(w.pidFile)).toBe(false);
});
