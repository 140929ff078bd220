'use strict';
// Errors a user makes read like Node's own (issue 19, item 8): the message first, a suggestion
// for a near-miss option name, and no stack frames of sticky-rs's internals.
const { spawnSync } = require('node:child_process');
const net = require('node:net');
const path = require('node:path');
const ROOT = path.join(__dirname, '..');
const ownFrame = (line) =>
  /^\s+at /.test(line) &&
  (line.includes(path.join(ROOT, 'lib')) || line.includes(path.join(ROOT, 'index.js')) || line.includes('node:internal/'));

test.each([
  ['sticky', { concurency: 2 }, 'unknown option "concurency": did you mean "concurrency"?'],
  ['sticky', { prot: 8080 }, 'unknown option "prot": did you mean "port"?'],
  ['sticky', { workers: 2 }, 'unknown option "workers": did you mean "concurrency"?'],
  ['listen', { concurrency: 2 }, 'unknown option "concurrency": did you mean "workers"?'],
  ['listen', { hardShutdownDelya: 5 }, 'unknown option "hardShutdownDelya": did you mean "hardShutdownDelay"?'],
])('%s(%j): "%s"', (api, options, message) => {
  const sticky = require('..');
  let error;
  try {
    if (api === 'sticky') sticky(() => {}, options);
    else sticky.listen(require('node:http').createServer(), 0, options);
  } catch (err) {
    error = err;
  }
  expect(error.message).toBe(`sticky-rs: ${message}`);
  expect(error.name).toBe('TypeError');
  // No frame of sticky-rs: the first one is the caller's.
  const frames = error.stack.split('\n').filter((l) => /^\s+at /.test(l));
  expect(frames.filter(ownFrame)).toEqual([]);
  expect(frames[0]).toContain(__filename);
});

test('a name far from every option still lists them', () => {
  expect(() => require('..')(() => {}, { colour: 'red' })).toThrow(/unknown option "colour" \(known: concurrency, port, /);
});

test("an uncaught option error: the stack names the caller's line, no internal frame", () => {
  const script = "require(process.argv[1])(() => {}, { concurency: 2 }); // the user's line";
  const r = spawnSync(process.execPath, ['-e', script, ROOT], { encoding: 'utf8', timeout: 20000 });
  expect(r.status).toBe(1);
  const lines = r.stderr.split('\n');
  expect(lines.filter(ownFrame)).toEqual([]);
  expect(r.stderr).toMatch(/TypeError: sticky-rs: unknown option "concurency": did you mean "concurrency"\?\n\s+at \[eval\]:1/);
});

test('EADDRINUSE with the default errorHandler: the error, no internal frames, exit 1, nothing forked', async () => {
  const busy = net.createServer();
  await new Promise((resolve) => busy.listen(0, '::', resolve));
  try {
    const { port } = busy.address();
    const env = { ...process.env, OPTIONS: JSON.stringify({ concurrency: 1, port, errorHandler: null }) };
    const r = spawnSync(process.execPath, [path.join(__dirname, 'fixtures', 'ops-app.js')], { env, encoding: 'utf8', timeout: 20000 });
    console.log(`EADDRINUSE with the default errorHandler prints:\n${r.stdout}`);
    expect(r.status).toBe(1);
    expect(r.stdout).toMatch(new RegExp(`^Error: listen EADDRINUSE: address already in use :::${port}\n`));
    expect(r.stdout.split('\n').filter(ownFrame)).toEqual([]);
    expect(r.stdout).not.toMatch(/"event":"fork"/);
  } finally {
    busy.close();
  }
});
