'use strict';
// sticky-session 1.1.2's own test files, unchanged but for the module path and a free port, must
// pass against sticky-rs: each is a cluster primary that exits 0 when its assertions hold.
const { spawn } = require('node:child_process');
const path = require('node:path');
const { freePort } = require('./helpers');

const DIR = path.join(__dirname, 'fixtures', 'sticky-session');

test.each(['100-connections-test', 'fork-options-test', 'graceful-close-test'])('%s.js exits 0', async (name) => {
  const port = await freePort();
  const child = spawn(process.execPath, [path.join(DIR, `${name}.js`)], {
    env: { ...process.env, PORT: String(port) },
    stdio: ['ignore', 'pipe', 'pipe'],
    detached: true,
  });
  let output = '';
  child.stdout.on('data', (d) => (output += d));
  child.stderr.on('data', (d) => (output += d));
  const timer = setTimeout(() => {
    try {
      process.kill(-child.pid, 'SIGKILL');
    } catch {}
  }, 20000);
  try {
    const [code, signal] = await new Promise((resolve) => child.once('exit', (c, s) => resolve([c, s])));
    expect({ code, signal, output }).toEqual({ code: 0, signal: null, output: expect.any(String) });
  } finally {
    clearTimeout(timer);
    // The test's primary exits without stopping its workers; they follow it (IPC disconnect),
    // and anything left of the group goes now.
    try {
      process.kill(-child.pid, 'SIGKILL');
    } catch {}
  }
});
