'use strict';
// Where a setup's workers spend their CPU per connection: starts bench/apps/server.js with
// SETUP=<setup> (2 workers), loads it with `loadgen --mode close --connections 32 --ips 200`,
// and reports per connection the workers' user and system CPU (/proc/<pid>/stat) and, with
// --cpu-prof, the top self-time JS functions of the workers (node --cpu-prof, written when the
// workers exit on SIGTERM). With --perf, `perf record -g` runs on the workers during the load and
// `perf report` is saved next to the profiles (needs perf; JS frames via --perf-basic-prof).
//
// usage: node bench/profile-workers.js --setup sticky-rs|reuseport|cluster-none [--duration 5000]
//                                      [--rate N] [--cpu-prof] [--perf] [--out DIR] [--top 25]
// Run it with the node under test (e.g. Node 24); compare setups run back to back, as ratios.
const { spawn, spawnSync } = require('node:child_process');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const readline = require('node:readline');
const { freePort, groupPids, procStat } = require('./common');

const argv = process.argv.slice(2);
const value = (name, dflt) => {
  const i = argv.indexOf(name);
  return i >= 0 ? argv[i + 1] : dflt;
};
const SETUP = value('--setup', 'sticky-rs');
const DURATION = Number(value('--duration', 5000));
const CPU_PROF = argv.includes('--cpu-prof');
const PERF = argv.includes('--perf');
const TOP = Number(value('--top', 25));
// --rate N: a fixed arrival rate instead of close mode's closed loop, so that setups with different
// throughput see the same batches per wake-up and their CPU per connection compares directly.
const RATE = value('--rate', null);
const OUT = path.resolve(value('--out', fs.mkdtempSync(path.join(os.tmpdir(), `profile-${SETUP}-`))));
const LOADGEN = path.join(__dirname, 'loadgen', 'target', 'release', 'loadgen');
const SERVER = path.join(__dirname, 'apps', 'server.js');
const TICKS = 100; // USER_HZ: /proc/<pid>/stat counts in 1/100 s

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
let served = 0; // every connection of the workers' lives (probes, warm-up, load): the profiles' denominator
function loadgen(port, args, ms) {
  const r = spawnSync(LOADGEN, ['--url', `http://127.0.0.1:${port}/`, '--json', '--duration', `${ms}ms`, ...args], {
    encoding: 'utf8',
    timeout: ms + 30000,
  });
  if (r.status !== 0) throw new Error(`loadgen: ${r.stderr || r.error}`);
  const result = JSON.parse(r.stdout.trim().split('\n').pop());
  served += result.requests;
  return result;
}

// Self time per function over the profile's samples, idle and GC shown as Node names them.
function topSelf(file) {
  const prof = JSON.parse(fs.readFileSync(file, 'utf8'));
  const byId = new Map(prof.nodes.map((n) => [n.id, n]));
  const self = new Map();
  const deltas = prof.timeDeltas;
  let total = 0;
  for (let i = 0; i < prof.samples.length; i++) {
    const n = byId.get(prof.samples[i]);
    const dt = deltas[i + 1] !== undefined ? deltas[i + 1] : 0;
    const cf = n.callFrame;
    const key = `${cf.functionName || '(anonymous)'} ${cf.url ? `${path.basename(cf.url)}:${cf.lineNumber + 1}` : ''}`.trim();
    self.set(key, (self.get(key) || 0) + dt);
    if (cf.functionName !== '(idle)' && cf.functionName !== '(program)') total += dt;
  }
  return { total, self: [...self.entries()].sort((a, b) => b[1] - a[1]) };
}

async function main() {
  fs.mkdirSync(OUT, { recursive: true });
  const port = await freePort();
  const nodeOptions = [process.env.NODE_OPTIONS || '', CPU_PROF ? `--cpu-prof --cpu-prof-dir=${OUT}` : '', PERF ? '--perf-basic-prof' : '']
    .join(' ')
    .trim();
  // reuseport members exit on SIGTERM by default (no profile written): make it a normal exit.
  const exitOnTerm = path.join(OUT, 'exit-on-term.js');
  fs.writeFileSync(exitOnTerm, "if (process.env.SETUP === 'reuseport-member') process.on('SIGTERM', () => process.exit(0));\n");
  const child = spawn(process.execPath, ['-r', exitOnTerm, SERVER], {
    env: { ...process.env, SETUP, PORT: String(port), WORKERS: '2', SOCKETIO: '0', NODE_OPTIONS: `${nodeOptions} -r ${exitOnTerm}`.trim() },
    stdio: ['ignore', 'pipe', 'inherit'],
    detached: true,
    cwd: OUT, // --perf-basic-prof leaves isolate-*.log files in the working directory
  });
  const killGroup = (sig) => {
    try {
      process.kill(-child.pid, sig);
    } catch {}
  };
  process.on('exit', () => killGroup('SIGKILL'));
  const primary = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('not listening within 20 s')), 20000);
    child.once('exit', (code) => reject(new Error(`exited ${code}`)));
    readline.createInterface({ input: child.stdout }).on('line', (line) => {
      if (line.includes('"listening"')) {
        clearTimeout(timer);
        resolve(JSON.parse(line).pid);
      }
    });
  });
  const close = ['--mode', 'close', '--connections', '32', '--ips', '200'];
  for (let i = 0; i < 50; i++) {
    const probe = loadgen(port, [...close, '--requests', '64', '--timeout', '1s'], 2000);
    if (probe.requests > 0 && Object.values(probe.errors).every((n) => !n)) break;
    await sleep(200);
  }
  loadgen(port, close, 1000); // warm-up
  const workers = groupPids(child.pid).filter((pid) => pid !== primary || SETUP === 'single');
  const before = new Map(workers.map((pid) => [pid, procStat(pid)]));
  let perf = null;
  if (PERF) {
    perf = spawn('perf', ['record', '-g', '-F', '999', '-o', path.join(OUT, 'perf.data'), '-p', workers.join(',')], { stdio: 'ignore' });
    await sleep(300);
  }
  const r = loadgen(port, RATE ? ['--mode', 'rate', '--rate', RATE, '--ips', '200', '--timeout', '5s'] : close, DURATION);
  const after = new Map(workers.map((pid) => [pid, procStat(pid)]));
  if (perf) {
    perf.kill('SIGINT');
    await new Promise((res) => perf.once('exit', res));
  }
  let user = 0;
  let sys = 0;
  for (const pid of workers) {
    user += after.get(pid).utime - before.get(pid).utime;
    sys += after.get(pid).stime - before.get(pid).stime;
  }
  const us = (ticks) => ((ticks / TICKS) * 1e6) / r.requests;
  console.log(
    `${SETUP} on Node ${process.version}: ${r.requests} connections, ${Math.round(r.rps)} conn/s; workers ${workers.join(',')}: ` +
      `user ${us(user).toFixed(1)} + system ${us(sys).toFixed(1)} = ${us(user + sys).toFixed(1)} µs/conn (tick resolution 10 ms)`,
  );
  killGroup('SIGTERM');
  for (let i = 0; i < 150 && groupPids(child.pid).length; i++) await sleep(100);
  killGroup('SIGKILL');
  if (CPU_PROF) {
    for (const name of fs.readdirSync(OUT).filter((n) => n.endsWith('.cpuprofile'))) {
      const pid = Number(name.split('.')[3]);
      if (!workers.includes(pid)) continue;
      const { total, self } = topSelf(path.join(OUT, name));
      // Per connection of both workers (each served about half): compare setups by these.
      const per = (t) => `${((2 * t) / served).toFixed(2).padStart(7)} µs/conn`;
      console.log(`\n${name}: busy (not idle/program) ${per(total)} over its life (${served} connections to both workers)`);
      for (const [key, t] of self.slice(0, TOP)) console.log(`  ${per(t)}  ${key}`);
    }
  }
  if (PERF) {
    const report = spawnSync(
      'perf',
      [
        'report',
        '-i',
        path.join(OUT, 'perf.data'),
        '--no-children',
        '--sort',
        'dso,sym',
        '--stdio',
        '-g',
        'none',
        '--percent-limit',
        '0.7',
      ],
      { encoding: 'utf8', maxBuffer: 64 << 20 },
    );
    fs.writeFileSync(path.join(OUT, 'perf-report.txt'), report.stdout);
    console.log(
      `\nperf (workers, self):\n${report.stdout
        .split('\n')
        .filter((l) => l && !l.startsWith('#'))
        .slice(0, TOP)
        .join('\n')}`,
    );
  }
  console.log(`\nfiles in ${OUT}`);
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
