'use strict';
// Paired connection-rate comparison, for differences of a few percent that bench/run.js cannot
// resolve on a shared machine (its 3-second figures, one setup after another, vary by ±10%).
// Every setup named is started once and left running (an idle one costs next to nothing); then
// `loadgen --mode close --connections 32 --ips 200` runs against each in turn for --ms, in an order
// rotated (and reversed every other round) each round, so that drift hits all alike. Each round
// gives one pair ratio per setup against the first; the table gives their median and its 90%
// bootstrap interval.
//
// usage: node bench/pair.js [--rounds 60] [--ms 1000] [--out FILE] SETUP[:NAME=VALUE] ...
//   SETUP is one of bench/apps/server.js's setups; the first is the baseline. NAME=VALUE is put in
//   that setup's environment (a variant of a build to compare). --out also writes the table.
// example: node bench/pair.js reuseport sticky-rs cluster-none
const { spawn, spawnSync } = require('node:child_process');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { freePort, median } = require('./common');

const LOADGEN = path.join(__dirname, 'loadgen', 'target', 'release', 'loadgen');
const SERVER = path.join(__dirname, 'apps', 'server.js');
const WORKERS = 2;
const START_TIMEOUT_MS = 20000;

const argv = process.argv.slice(2);
const option = (name, dflt) => {
  const i = argv.indexOf(name);
  if (i < 0) return dflt;
  const [value] = argv.splice(i, 2).slice(1);
  return value;
};
const ROUNDS = Number(option('--rounds', 60));
const MS = Number(option('--ms', 1000));
const OUT = option('--out', null);
const specs = argv;
if (specs.length < 2 || !(ROUNDS > 0) || !(MS > 0)) {
  console.error('usage: node bench/pair.js [--rounds 60] [--ms 1000] [--out FILE] BASELINE SETUP[:NAME=VALUE] ...');
  process.exit(2);
}
if (!fs.existsSync(LOADGEN)) {
  console.error(`no ${LOADGEN}: build it with cargo build --release --manifest-path bench/loadgen/Cargo.toml`);
  process.exit(2);
}

// Every setup is its own process group; all are killed on every way out.
const groups = new Set();
const killAll = () => {
  for (const pid of groups) {
    try {
      process.kill(-pid, 'SIGKILL');
    } catch {} // gone already
  }
};
process.on('exit', killAll);
for (const sig of ['SIGINT', 'SIGTERM']) process.on(sig, () => process.exit(130));

async function start(spec) {
  const [setup, ...vars] = spec.split(':');
  const env = Object.fromEntries(vars.map((v) => [v.slice(0, v.indexOf('=')), v.slice(v.indexOf('=') + 1)]));
  const port = await freePort();
  const child = spawn(process.execPath, [SERVER], {
    env: { ...process.env, SETUP: setup, PORT: String(port), WORKERS: String(WORKERS), SOCKETIO: '0', ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
    detached: true,
  });
  groups.add(child.pid);
  let stderr = '';
  child.stderr.on('data', (d) => (stderr = (stderr + d).slice(-2000)));
  await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`${spec}: not listening after ${START_TIMEOUT_MS} ms`)), START_TIMEOUT_MS);
    child.stdout.on('data', (d) => {
      if (String(d).includes('"listening"')) {
        clearTimeout(timer);
        resolve();
      }
    });
    child.once('exit', (code, signal) => {
      clearTimeout(timer);
      reject(new Error(`${spec} exited (${signal || code}): ${stderr.trim().split('\n').pop()}`));
    });
  });
  child.stdout.resume();
  return { spec, port, rps: [] };
}

function closeRate(port, ms) {
  const args = ['--url', `http://127.0.0.1:${port}/`, '--mode', 'close', '--connections', '32', '--ips', '200'];
  const r = spawnSync(LOADGEN, [...args, '--duration', `${ms}ms`, '--json'], { encoding: 'utf8', timeout: ms + 15000 });
  if (r.status !== 0) throw new Error(`loadgen on port ${port}: ${r.error?.message || r.stderr.trim().split('\n').pop()}`);
  return JSON.parse(r.stdout.trim().split('\n').pop()).rps;
}

// 90% interval of the median by resampling the rounds (a fixed seed: the same data, the same interval).
function interval(values) {
  let seed = 12345;
  const random = () => {
    seed = (seed * 1103515245 + 12345) % 2 ** 31;
    return seed / 2 ** 31;
  };
  const medians = [];
  for (let b = 0; b < 2000; b++) medians.push(median(values.map(() => values[Math.floor(random() * values.length)])));
  medians.sort((a, b) => a - b);
  return [medians[100], medians[1899]];
}

async function main() {
  const setups = [];
  for (const spec of specs) setups.push(await start(spec));
  for (const s of setups) closeRate(s.port, 1500); // warm-up
  const started = Date.now();
  for (let round = 0; round < ROUNDS; round++) {
    const order = setups.map((_, i) => setups[(i + round) % setups.length]);
    if (round % 2) order.reverse();
    for (const s of order) s.rps.push(closeRate(s.port, MS));
  }
  const [base] = setups;
  const git = spawnSync('git', ['rev-parse', '--short', 'HEAD'], { cwd: __dirname, encoding: 'utf8' }).stdout?.trim();
  const lines = [
    `# pair.js: ${ROUNDS} rounds of ${MS} ms per setup, Node ${process.version}, ${WORKERS} workers, ${new Date().toISOString().slice(0, 10)}`,
    '',
    `- machine: ${os.cpus()[0]?.model}, ${os.cpus().length} cores, Linux ${os.release()}; sticky-rs: git ${git || 'unknown'}`,
    '- load: `loadgen --mode close --connections 32 --ips 200`, setups started once, order rotated each round',
    '',
    `| setup | median conn/s | median pair ratio to ${base.spec} | 90% interval |`,
    '|---|---:|---:|---|',
  ];
  for (const s of setups) {
    const ratios = s.rps.map((v, i) => v / base.rps[i]);
    const [lo, hi] = interval(ratios);
    lines.push(`| ${s.spec} | ${median(s.rps).toFixed(0)} | ${median(ratios).toFixed(3)}x | ${lo.toFixed(3)}-${hi.toFixed(3)} |`);
  }
  lines.push('', `(${((Date.now() - started) / 1000).toFixed(0)} s of load)`);
  console.log(lines.join('\n'));
  if (OUT) fs.writeFileSync(OUT, `${lines.join('\n')}\n`);
}

main().then(
  () => process.exit(0),
  (err) => {
    console.error(err.message);
    process.exit(1);
  },
);
