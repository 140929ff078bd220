'use strict';
// SIGHUP's two meanings (issue 19, item 1), on a real pseudo-terminal (python3's pty module):
// closing the terminal the app runs in ends it, as it ends a plain Node server; a deliberate
// `kill -HUP` with the terminal still open (and any SIGHUP without a terminal) reloads.
const { spawn } = require('node:child_process');
const net = require('node:net');
const path = require('node:path');
const readline = require('node:readline');
const { sleep, freePort, alive, get, clientIp } = require('./helpers');

const PTY_RUN = path.join(__dirname, 'fixtures', 'pty-run.py');
const APP = path.join(__dirname, 'fixtures', 'cluster-app.js');

const running = new Set();

/** The app on a new pseudo-terminal: its events (JSON lines) and its terminal's text. */
function onTerminal(env) {
  const child = spawn('python3', [PTY_RUN, process.execPath, APP], {
    env: { ...process.env, ...env },
    stdio: ['pipe', 'pipe', 'pipe'],
    detached: true,
  });
  running.add(child);
  const run = { child, events: [], text: '' };
  readline.createInterface({ input: child.stdout }).on('line', (line) => {
    run.text += `${line}\n`;
    try {
      run.events.push(JSON.parse(line.trim()));
    } catch {}
  });
  run.next = async (predicate, timeout = 20000) => {
    const deadline = Date.now() + timeout;
    for (;;) {
      const event = run.events.find(predicate);
      if (event) return event;
      if (Date.now() > deadline) throw new Error(`no matching event in ${timeout} ms; terminal: ${run.text}`);
      await sleep(20);
    }
  };
  return run;
}

/** Whether something accepts connections on `port`. */
function portOpen(port) {
  return new Promise((resolve) => {
    const socket = net.connect({ host: '127.0.0.1', port }, () => {
      socket.destroy();
      resolve(true);
    });
    socket.on('error', () => resolve(false));
  });
}

afterEach(() => {
  for (const child of running) {
    try {
      process.kill(-child.pid, 'SIGKILL');
    } catch {}
  }
  running.clear();
});

test('closing the terminal ends the app: primary and workers gone, port closed within 5 s, no abort', async () => {
  const port = await freePort();
  const run = onTerminal({ PORT: String(port), WORKERS: '2' });
  const { pid: primary } = await run.next((e) => e.event === 'listening');
  await run.next((e) => e.event === 'ready' && e.slot === 0);
  await run.next((e) => e.event === 'ready' && e.slot === 1);
  const workers = run.events.filter((e) => e.event === 'ready').map((e) => e.pid);
  const answer = await get(port, clientIp(0));
  expect(answer.status).toBe(200);
  const closed = Date.now();
  run.child.stdin.write('close\n');
  const exit = await run.next((e) => e.event === 'pty-exit', 20000);
  const gone = Date.now() - closed;
  const open = await portOpen(port);
  console.log(`terminal closed: primary ended by ${exit.signal || `exit ${exit.code}`} after ${gone} ms; port open after: ${open}`);
  // Ended as a hang-up ends a program, not by Node's abort on the dead terminal (SIGABRT).
  expect(exit).toMatchObject({ code: null, signal: 'SIGHUP' });
  expect(gone).toBeLessThan(5000);
  expect(open).toBe(false);
  expect(alive(primary)).toBe(false);
  for (const pid of workers) expect(alive(pid)).toBe(false);
}, 40000);

test('kill -HUP with the terminal open reloads (and says so); the app keeps serving', async () => {
  const port = await freePort();
  const run = onTerminal({ PORT: String(port), WORKERS: '2' });
  const { pid: primary } = await run.next((e) => e.event === 'listening');
  await run.next((e) => e.event === 'ready' && e.slot === 0);
  await run.next((e) => e.event === 'ready' && e.slot === 1);
  const before = run.events.filter((e) => e.event === 'ready').map((e) => e.pid);
  process.kill(primary, 'SIGHUP');
  await run.next((e) => e.event === 'ready' && !before.includes(e.pid) && e.slot === 0);
  await run.next((e) => e.event === 'ready' && !before.includes(e.pid) && e.slot === 1);
  expect(run.text).toMatch(/\[sticky-rs\] SIGHUP: reloading every worker \(its terminal is still open: a deliberate kill -HUP\)/);
  const answer = await get(port, clientIp(0));
  expect(answer.status).toBe(200);
  expect(before).not.toContain(answer.body.pid);
  expect(alive(primary)).toBe(true);
}, 40000);
