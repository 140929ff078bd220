'use strict';
// Under PM2 (the real one, from npm): fork mode with one instance runs the sticky-rs primary
// (`pm2 start app.js`): it serves stickily, `pm2 reload` stops it gracefully (SIGINT, exit 0)
// and starts a new one, `pm2 stop` exits 0 and leaves no worker behind. Cluster mode
// (`pm2 start -i 2`) cannot work, and the app's error log says so and what to do instead.
const { spawnSync } = require('node:child_process');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { sleep, freePort, clientIp, get, alive } = require('./helpers');

const PM2 = require.resolve('pm2/bin/pm2');
const APP = path.join(__dirname, 'fixtures', 'ops-app.js');
const home = fs.mkdtempSync(path.join(os.tmpdir(), 'sticky-rs-pm2-'));

/** Runs the pm2 CLI with its own PM2_HOME; `env` reaches the app (PM2 passes the CLI's environment). */
function pm2(args, env = {}) {
  const r = spawnSync(process.execPath, [PM2, ...args], {
    env: { ...process.env, PM2_HOME: home, ...env },
    encoding: 'utf8',
    timeout: 60000,
  });
  if (r.status !== 0) throw new Error(`pm2 ${args.join(' ')}: exit ${r.status}\n${r.stdout}${r.stderr}`);
  return r.stdout;
}

/** pm2 jlist: { name: { pid, status, restarts } }. */
function list() {
  const apps = JSON.parse(pm2(['jlist']));
  return Object.fromEntries(apps.map((a) => [a.name, { pid: a.pid, status: a.pm2_env.status, mode: a.pm2_env.exec_mode }]));
}

async function until(condition, timeout, what) {
  const deadline = Date.now() + timeout;
  for (;;) {
    const value = await condition();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`not within ${timeout} ms: ${what}`);
    await sleep(100);
  }
}

afterAll(() => {
  try {
    pm2(['kill']);
  } catch {}
  fs.rmSync(home, { recursive: true, force: true });
});

test('fork mode, one instance: sticky, `pm2 reload` is graceful (SIGINT, exit 0), `pm2 stop` exits 0 with no worker left', async () => {
  const port = await freePort();
  const env = { OPTIONS: JSON.stringify({ concurrency: 2, port }) };
  pm2(['start', APP, '--name', 'sticky-fork', '--kill-timeout', '20000'], env);
  const serve = async () => {
    const answers = await Promise.all(Array.from({ length: 20 }, (_, i) => get(port, clientIp(i)).catch(() => null)));
    if (answers.some((a) => a?.status !== 200)) return null;
    const again = await Promise.all(Array.from({ length: 20 }, (_, i) => get(port, clientIp(i))));
    expect(again.map((a) => a.body.pid)).toEqual(answers.map((a) => a.body.pid)); // sticky
    return answers;
  };
  const first = await until(serve, 20000, 'the app under pm2 serves');
  expect(new Set(first.map((a) => a.body.index))).toEqual(new Set(['0', '1']));
  const primary = list()['sticky-fork'];
  expect(primary).toMatchObject({ status: 'online', mode: 'fork_mode' });

  pm2(['reload', 'sticky-fork']);
  const second = await until(serve, 20000, 'the app serves again after pm2 reload');
  const reloaded = list()['sticky-fork'];
  expect(reloaded.pid).not.toBe(primary.pid);
  expect(alive(primary.pid)).toBe(false);
  for (const pid of new Set(first.map((a) => a.body.pid))) expect(alive(pid)).toBe(false);

  pm2(['stop', 'sticky-fork']);
  expect(list()['sticky-fork'].status).toBe('stopped');
  for (const pid of new Set(second.map((a) => a.body.pid))) await until(() => !alive(pid), 5000, `worker ${pid} gone`);
  const log = fs.readFileSync(path.join(home, 'pm2.log'), 'utf8');
  const exits = log.split('\n').filter((l) => /App \[sticky-fork:\d+\] exited with code/.test(l));
  console.log(`pm2 fork mode: ${exits.map((l) => l.replace(/^.*App/, 'App')).join('; ')}`);
  expect(exits).toHaveLength(2);
  for (const line of exits) expect(line).toMatch(/exited with code \[0\] via signal \[SIGINT\]/);
  // pm2 signals the whole process tree: the workers' own SIGINT is no crash, and no worker is
  // forked while the primary stops (issue 19, items 2 and 6).
  const errors = fs
    .readdirSync(path.join(home, 'logs'))
    .filter((f) => f.startsWith('sticky-fork-error'))
    .map((f) => fs.readFileSync(path.join(home, 'logs', f), 'utf8'))
    .join('');
  expect(errors).not.toMatch(/respawning|exited with code/);
  pm2(['delete', 'sticky-fork']);
});

test('cluster mode (`pm2 start -i 2`): the app fails and its error log says to use fork mode', async () => {
  const port = await freePort();
  pm2(['start', APP, '--name', 'sticky-cluster', '-i', '2'], { OPTIONS: JSON.stringify({ concurrency: 2, port }) });
  const errorLog = path.join(home, 'logs', 'sticky-cluster-error-0.log');
  const text = await until(
    () =>
      fs.existsSync(errorLog) &&
      /started by PM2 in cluster mode/.test(fs.readFileSync(errorLog, 'utf8')) &&
      fs.readFileSync(errorLog, 'utf8'),
    20000,
    'the advice in the error log',
  );
  expect(text).toMatch(/Run one instance in fork mode \(pm2 start app\.js, or exec_mode: "fork", instances: 1\)/);
  expect(list()['sticky-cluster'].mode).toBe('cluster_mode');
  // The instance says why, then exits with code 1 (PM2 restarts it, and it exits again).
  await until(
    () => /App \[sticky-cluster:\d+\] exited with code \[1\]/.test(fs.readFileSync(path.join(home, 'pm2.log'), 'utf8')),
    10000,
    'exit code 1 in pm2.log',
  );
  pm2(['delete', 'sticky-cluster']);
});
