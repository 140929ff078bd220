'use strict';
// Kernel dispatch under hostile code: a worker holds its slot's member of the SO_REUSEPORT group
// (the very socket the primary holds), and a process of the same user can join the group. Each
// attack is made from the outside by real code on the real socket (__test__/fixtures/
// kernel-attack.py, run by the worker on its member, or as a process of its own); the group must
// be whole again within 1 s, with no restart of the primary: every one of 200 client addresses
// served on its djb2 slot, and the damage said in stats() and on stderr.
const { spawn, spawnSync } = require('node:child_process');
const http = require('node:http');
const path = require('node:path');
const { range, freePort, clientIp, startFixture, stopAll, get, pool, slotOf, ipsOf, refusingSockopt } = require('./helpers');

const WORKERS = 3;
const ATTACKER = 1;
const HEAL_MS = 1000;
const python = spawnSync('python3', ['-c', 'import socket'], { stdio: 'ignore' }).status === 0;
const attackers = new Set();

afterEach(async () => {
  for (const child of attackers) child.kill('SIGKILL');
  attackers.clear();
  await stopAll();
});

const ips = range(200).map((i) => clientIp(3000 + i));

async function start(env = {}) {
  const port = await freePort();
  const app = startFixture('cluster-app.js', { PORT: port, WORKERS, DISPATCH: 'kernel', ...env });
  await app.count('ready', WORKERS);
  return { app, port };
}

/**
 * GET / from `ip`, failing after `timeout` ms, the connect included (a SYN dropped by a socket
 * filter is retried by the kernel for two minutes).
 */
function ask(port, ip, timeout = 3000) {
  return new Promise((resolve, reject) => {
    const req = http.get({ host: '127.0.0.1', port, localAddress: ip, agent: false, timeout }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (c) => (body += c));
      res.on('end', () => resolve({ status: res.statusCode, body: JSON.parse(body) }));
    });
    req.on('timeout', () => req.destroy(new Error(`no answer in ${timeout} ms`)));
    req.on('error', reject);
  });
}

/** Every address once: which answered from another slot than its djb2 slot, which failed. */
async function census(port) {
  const wrong = [];
  const failed = [];
  await pool(ips, 20, async (ip) => {
    try {
      const { status, body } = await ask(port, ip);
      if (status !== 200) failed.push(`${ip}: ${status}`);
      else if (body.slot !== slotOf(ip, WORKERS)) wrong.push(`${ip}: slot ${body.slot}, not ${slotOf(ip, WORKERS)}`);
    } catch (err) {
      failed.push(`${ip}: ${err.message}`);
    }
  });
  return { wrong, failed };
}

/** Resolves once `check()` holds, polling every 20 ms; rejects after `timeout` ms. */
async function until(check, timeout, what) {
  const deadline = Date.now() + timeout;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`not within ${timeout} ms: ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** The attacker's worker runs `kind` on its own member; resolves when the attack was made. */
async function attack(port, kind, extra = '') {
  const [ip] = ipsOf(ATTACKER, WORKERS, 1);
  const { status, body } = await get(port, ip, `/attack?kind=${kind}${extra}`);
  expect(status).toBe(200);
  expect(body).toMatchObject({ slot: ATTACKER, code: 0 });
  expect(JSON.parse(body.out)).toMatchObject({ event: 'attacked', kind });
  return Date.now();
}

/** Waits until `HEAL_MS` after `at`, then every client must land on its slot. */
async function healedBy(port, at) {
  const wait = at + HEAL_MS - Date.now();
  if (wait > 0) await new Promise((r) => setTimeout(r, wait));
  const { wrong, failed } = await census(port);
  expect({ wrong: wrong.slice(0, 5), failed: failed.slice(0, 5), counts: [wrong.length, failed.length] }).toEqual({
    wrong: [],
    failed: [],
    counts: [0, 0],
  });
}

const cases = [
  // [attack, what the check reports]
  ['program', /program had been replaced or detached/],
  ['shutdown', /slot 1's socket had stopped listening .*listens again/],
  ['rejoin', /numbering of the group's sockets had changed/],
  ['filter', /slot 1's socket carried a socket filter .*removed/],
  ['detach', /program had been replaced or detached/],
  ['backlog', /slot 1's socket's backlog had been set to 0 .*set back/],
];

const maybe = python ? describe : describe.skip;

maybe('kernel dispatch heals its SO_REUSEPORT group after hostile code in a worker', () => {
  test.each(cases)('%s: every client is on its slot again within 1 s, and the repair is said', async (kind, said) => {
    const { app, port } = await start();
    expect(await census(port)).toEqual({ wrong: [], failed: [] });
    const primaryPid = (await app.next((e) => e.event === 'listening')).pid;
    const at = await attack(port, kind);
    await healedBy(port, at);
    const stats = await app.stats();
    expect(stats.kernel[0].repairs).toBeGreaterThan(0);
    expect(stats.kernel[0].recent.join('\n')).toMatch(said);
    expect(stats.kernel[0].damage).toEqual([]);
    // Always said, without debug.
    await until(() => /kernel dispatch, listener 0: its SO_REUSEPORT group was tampered with/.test(app.stderr), 2000, app.stderr);
    expect(app.stderr).toMatch(said);
    // No restart of the primary.
    expect(app.events.filter((e) => e.event === 'listening').map((e) => e.pid)).toEqual([primaryPid]);
  });

  test('a filter locked with SO_LOCK_FILTER: the slot is served through the primary, and the damage is said while it lasts', async () => {
    const { app, port } = await start();
    const at = await attack(port, 'locked-filter');
    await healedBy(port, at);
    const stats = await app.stats();
    expect(stats.kernel[0].detoured).toEqual([ATTACKER]);
    expect(stats.kernel[0].damage.join('\n')).toMatch(/slot 1: .*locked with SO_LOCK_FILTER.*routed by the primary/);
    await until(() => /kernel dispatch, listener 0: damaged: slot 1: /.test(app.stderr), 2000, app.stderr);
  });

  test.each(['shutdown', 'program'])('%s, then the attacker exits: healed before its replacement is reported ready', async (kind) => {
    const { app, port } = await start();
    const attacker = (await app.next((e) => e.event === 'ready' && e.slot === ATTACKER)).pid;
    await attack(port, kind, '&exit');
    await app.next((e) => e.event === 'exit' && e.pid === attacker);
    await app.next((e) => e.event === 'ready' && e.slot === ATTACKER && e.pid !== attacker);
    const { wrong, failed } = await census(port);
    expect([wrong.length, failed.length]).toEqual([0, 0]);
    const stats = await app.stats();
    expect(stats.kernel[0].repairs).toBeGreaterThan(0);
  });

  test('a process of the same user joins the group with its own program, then exits', async () => {
    const { app, port } = await start();
    // Its socket joins last: index WORKERS + 1 (the fallback is 0).
    const script = path.join(__dirname, 'fixtures', 'kernel-attack.py');
    const intruder = spawn('python3', [script, 'join', String(port), '1500', String(WORKERS + 1)], {
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    attackers.add(intruder);
    let out = '';
    intruder.stdout.on('data', (d) => (out += d));
    await until(() => out.includes('attacked'), 5000, 'the intruder joined');
    const at = Date.now();
    // While it is there: every client on its slot within 1 s, none to the intruder.
    await healedBy(port, at);
    const during = await app.stats();
    expect(during.kernel[0].recent.join('\n')).toMatch(/program had been replaced|another process joined/);
    expect(during.kernel[0].damage.join('\n')).toMatch(/another process is in the group/);
    await new Promise((resolve) => intruder.once('exit', resolve));
    const left = Date.now();
    await healedBy(port, left);
    const after = await app.stats();
    expect(after.kernel[0].damage).toEqual([]);
  });

  test('a kernel without TCP MD5: no probes, no false alarm; a foreign program is still undone, a renumbered group goes through the primary', async () => {
    // TCP_MD5SIG answers ENOPROTOOPT in the primary, as on a kernel built without it.
    const shim = refusingSockopt('IPPROTO_TCP', '14 /* TCP_MD5SIG */');
    try {
      const { app, port } = await start({ LD_PRELOAD: shim.path });
      expect(await census(port)).toEqual({ wrong: [], failed: [] });
      expect((await app.stats()).kernel[0]).toMatchObject({ repairs: 0, damage: [] });
      await healedBy(port, await attack(port, 'program'));
      expect((await app.stats()).kernel[0].damage).toEqual([]);
      await healedBy(port, await attack(port, 'shutdown'));
      const stats = await app.stats();
      expect(stats.kernel[0].damage).toEqual([
        "the kernel's numbering of the group could not be measured: every slot is routed by the primary",
      ]);
      expect(stats.kernel[0].recent.join('\n')).toMatch(/cannot be measured here .*every slot goes to the fallback member/);
    } finally {
      shim.remove();
    }
  });
});
