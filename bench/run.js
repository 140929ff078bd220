'use strict';
// Connection benchmark: sticky-rs against a single process, node:cluster (SCHED_RR, SCHED_NONE),
// plain SO_REUSEPORT processes (Node >= 22.12's listen({ reusePort: true }); skipped before),
// sticky-session 1.1.2, sticky-cluster 0.3.5 and @socket.io/sticky 2.0.1, all with the same tiny
// HTTP handler (bench/apps/server.js) and 2 workers. Setups run interleaved (A, B, C, ... then
// again) and every figure is the median over the repetitions.
//
// usage: node bench/run.js [--reps 3] [--duration 3000] [--smoke] [--only a,b] [--out DIR]
//                          [--figures close,rate,keepalive,socketio]
//   --smoke  300 ms runs, 1 repetition, few addresses; checks every setup produced numbers (or a
//            recorded failure) and exits 1 if sticky-rs or a Node baseline produced nothing.
//            Writes its report to the OS temp dir unless --out is given.
//
// Figures per setup:
//   close     loadgen --mode close, 32 connections, 200 addresses: new connections/s; CPU of the
//             primary and of the workers per connection (/proc/<pid>/task/*/schedstat) during it;
//             the primary's VmRSS right after it
//   rate      loadgen --mode rate --rate 1000, 200 addresses: TTFB p50, p99, mean
//   keepalive loadgen --mode keepalive, 32 connections, 32 addresses: requests/s
//   socket.io bench/socketio-sessions.js (SOCKETIO=1 servers): polling sessions from 200
//             addresses, one TCP connection per request: success rate and sessions/s
const { spawn, spawnSync } = require('node:child_process');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const readline = require('node:readline');
const { freePort, groupPids, median } = require('./common');

const ROOT = path.resolve(__dirname, '..');
const LOADGEN = path.join(__dirname, 'loadgen', 'target', 'release', 'loadgen');
const SERVER = path.join(__dirname, 'apps', 'server.js');
const SESSIONS = path.join(__dirname, 'socketio-sessions.js');

const SETUPS = [
  { id: 'single', label: 'single process (no cluster)', baseline: true },
  { id: 'cluster-rr', label: 'node:cluster SCHED_RR', baseline: true },
  { id: 'cluster-none', label: 'node:cluster SCHED_NONE', baseline: true },
  // The limit of a sticky design: one accept queue per process, the kernel's 4-tuple hash.
  { id: 'reuseport', label: 'plain SO_REUSEPORT (2 processes)', baseline: true, minNode: [22, 12] },
  { id: 'sticky-session', label: 'sticky-session 1.1.2', peer: true },
  { id: 'sticky-cluster', label: 'sticky-cluster 0.3.5', peer: true },
  { id: 'socketio-sticky', label: '@socket.io/sticky 2.0.1', peer: true },
  // The default: dispatch 'auto', i.e. the kernel picks the slot on Linux.
  { id: 'sticky-rs', label: 'sticky-rs (default: kernel dispatch)', own: true },
  { id: 'sticky-rs-primary', label: "sticky-rs, dispatch: 'primary' (the router)", own: true },
  { id: 'sticky-rs-sid', label: "sticky-rs setupMaster (routeBy 'sid')", own: true },
];

// ---- options
const argv = process.argv.slice(2);
const flag = (name) => argv.includes(name);
const value = (name, dflt) => {
  const i = argv.indexOf(name);
  return i >= 0 ? argv[i + 1] : dflt;
};
const SMOKE = flag('--smoke');
const REPS = Number(value('--reps', SMOKE ? 1 : 3));
const DURATION = Number(value('--duration', SMOKE ? 300 : 3000)); // ms per figure
const OUT = value('--out', SMOKE ? path.join(os.tmpdir(), 'sticky-rs-bench-smoke') : path.join(__dirname, 'results'));
const ONLY = value('--only', '');
const CLOSE_IPS = SMOKE ? 16 : 200;
const SIO_IPS = SMOKE ? 16 : 200;
const WORKERS = 2;
const nodeAtLeast = ([major, minor]) => {
  const [M, m] = process.versions.node.split('.').map(Number);
  return M > major || (M === major && m >= minor);
};
const setups = (ONLY ? SETUPS.filter((s) => ONLY.split(',').includes(s.id)) : SETUPS).filter((s) => {
  if (!s.minNode || nodeAtLeast(s.minNode)) return true;
  console.log(`skipping ${s.id}: needs Node >= ${s.minNode.join('.')} (this is ${process.version}); run bench/run.js with a newer node`);
  return false;
});
const FIGURE_SET = new Set(value('--figures', 'close,rate,keepalive,socketio').split(','));
const want = (name) => FIGURE_SET.has(name);
// --only / --figures runs do not replace the full report: they write partial.md / partial.svg.
const PARTIAL = !SMOKE && (ONLY !== '' || FIGURE_SET.size < 4);

// ---- process bookkeeping: every child is tracked and killed, always
const live = new Set(); // { child, group }
function track(child, group) {
  const entry = { child, group };
  live.add(entry);
  child.once('exit', () => live.delete(entry));
  return entry;
}
function killEntry({ child, group }) {
  try {
    if (group) process.kill(-child.pid, 'SIGKILL');
    else child.kill('SIGKILL');
  } catch {}
}
const killAll = () => {
  for (const entry of live) killEntry(entry);
};
process.on('exit', killAll);
for (const sig of ['SIGINT', 'SIGTERM']) {
  process.on(sig, () => {
    console.error(`\n${sig}: stopping every process started by the benchmark`);
    killAll();
    process.exit(130);
  });
}

// ---- /proc helpers
function cpuNs(pid) {
  let total = 0;
  try {
    for (const task of fs.readdirSync(`/proc/${pid}/task`)) {
      try {
        total += Number(fs.readFileSync(`/proc/${pid}/task/${task}/schedstat`, 'utf8').split(' ')[0]);
      } catch {} // a thread that just ended
    }
  } catch {} // the process ended
  return total;
}
function rssMb(pid) {
  const m = /VmRSS:\s+(\d+) kB/.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m ? Number(m[1]) / 1024 : null;
}
const cpuSnapshot = (pgid) => new Map(groupPids(pgid).map((pid) => [pid, cpuNs(pid)]));

// ---- helpers
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// `onLine` (optional) sees each complete stdout line as it arrives.
function runChild(cmd, args, timeoutMs, onLine = null) {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    track(child, false);
    let out = '';
    let err = '';
    child.stdout.on('data', (d) => {
      const seen = out.length;
      out += d;
      if (!onLine) return;
      const from = out.lastIndexOf('\n', seen - 1) + 1;
      const complete = out.slice(from, out.lastIndexOf('\n') + 1);
      for (const line of complete.split('\n')) if (line) onLine(line);
    });
    child.stderr.on('data', (d) => (err += d));
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.on('error', reject);
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      if (code !== 0)
        return reject(new Error(`${path.basename(cmd)} ${signal || `exit ${code}`}: ${err.trim().split('\n').pop() || out.trim()}`));
      resolve({ out, err });
    });
  });
}

async function loadgen(port, args, durationMs) {
  const { out, err } = await runChild(
    LOADGEN,
    ['--url', `http://127.0.0.1:${port}/`, '--json', '--duration', `${durationMs}ms`, ...args],
    durationMs + 30000,
  );
  const result = JSON.parse(out.trim().split('\n').pop());
  result.stderr = err.trim();
  return result;
}
const errorCount = (r) => Object.values(r.errors).reduce((a, b) => a + b, 0);
const errorSummary = (r) =>
  Object.entries(r.errors)
    .filter(([, n]) => n)
    .map(([k, n]) => `${n} ${k}`)
    .join(', ');

// Starts a setup as its own process group; resolves once it announced itself.
async function startSetup(setup, env) {
  const port = await freePort();
  const child = spawn(process.execPath, [SERVER], {
    cwd: ROOT,
    env: { ...process.env, SETUP: setup.id, PORT: String(port), WORKERS: String(WORKERS), ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
    detached: true,
  });
  const entry = track(child, true);
  let stderr = '';
  child.stderr.on('data', (d) => (stderr = (stderr + d).slice(-4000)));
  const stop = async () => {
    killEntry(entry);
    // wait until no member of the group is left (workers die with the group signal)
    for (let i = 0; i < 100 && groupPids(child.pid).length; i++) await sleep(20);
  };
  try {
    const pid = await new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`did not announce within 20 s`)), 20000);
      child.once('exit', (code, signal) => {
        clearTimeout(timer);
        reject(new Error(`exited (${signal || code}) before listening`));
      });
      readline.createInterface({ input: child.stdout }).on('line', (line) => {
        if (line.includes('"listening"')) {
          clearTimeout(timer);
          resolve(JSON.parse(line).pid);
        }
      });
    });
    return { port, pid, pgid: child.pid, stop, stderr: () => stderr };
  } catch (err) {
    await stop();
    const last =
      stderr
        .trim()
        .split('\n')
        .filter((l) => /Error|error/.test(l))
        .pop() ||
      stderr.trim().split('\n').pop() ||
      '';
    throw new Error(`${err.message}${last ? `: ${last.trim()}` : ''}`);
  }
}

// Every worker serves (sticky-session/-cluster lose connections sent before a worker is ready).
async function waitServing(port) {
  const deadline = Date.now() + 20000;
  let last;
  while (Date.now() < deadline) {
    last = await loadgen(port, ['--mode', 'close', '--connections', '8', '--ips', '16', '--requests', '64', '--timeout', '1s'], 3000);
    if (last.requests > 0 && errorCount(last) === 0) return;
    await sleep(200);
  }
  throw new Error(
    `not serving after 20 s: ${last ? errorSummary(last) || 'no responses' : 'no probe'}${last?.stderr ? ` (${last.stderr.split('\n')[0]})` : ''}`,
  );
}

const failureText = (err) =>
  String(err?.message ? err.message : err)
    .split('\n')[0]
    .slice(0, 300);

async function measureHttp(setup) {
  const out = { errors: [] };
  const srv = await startSetup(setup, { SOCKETIO: '0' });
  try {
    await waitServing(srv.port);
    await loadgen(srv.port, ['--mode', 'close', '--connections', '32', '--ips', String(CLOSE_IPS)], SMOKE ? 200 : 1000); // warm up
    // close mode, with CPU
    if (want('close')) {
      const before = cpuSnapshot(srv.pgid);
      const close = await loadgen(srv.port, ['--mode', 'close', '--connections', '32', '--ips', String(CLOSE_IPS)], DURATION);
      const after = cpuSnapshot(srv.pgid);
      out.closeRps = close.rps;
      out.closeErrors = errorCount(close);
      if (out.closeErrors) out.errors.push(`close: ${errorSummary(close)}`);
      if (close.requests > 0) {
        let primary = 0;
        let workers = 0;
        for (const [pid, ns] of after) {
          const delta = ns - (before.get(pid) || 0);
          if (pid === srv.pid) primary += delta;
          else workers += delta;
        }
        if (setup.id === 'single' || setup.id === 'reuseport') {
          // reuseport: the parent only started the processes; they are the workers.
          workers += primary;
          out.primaryUs = null; // no primary: the one process is the worker
          out.workersUs = workers / 1000 / close.requests;
        } else {
          out.primaryUs = primary / 1000 / close.requests;
          out.workersUs = workers / 1000 / close.requests;
        }
        out.totalUs = (primary + workers) / 1000 / close.requests;
      }
      out.rssMb = rssMb(srv.pid);
    }
    // fixed rate
    if (want('rate')) {
      const rate = await loadgen(srv.port, ['--mode', 'rate', '--rate', '1000', '--ips', String(CLOSE_IPS), '--timeout', '5s'], DURATION);
      if (rate.requests > 0) {
        out.p50 = rate.ttfb_ms.p50;
        out.p99 = rate.ttfb_ms.p99;
        out.mean = rate.ttfb_ms.mean;
      }
      out.rateDone = (100 * rate.requests) / (1000 * (DURATION / 1000));
      if (errorCount(rate) || rate.skipped)
        out.errors.push(`rate: ${[errorSummary(rate), rate.skipped ? `${rate.skipped} skipped` : ''].filter(Boolean).join(', ')}`);
      out.schedLag = rate.sched_lag_max_ms;
    }
    // keep-alive
    if (want('keepalive')) {
      const ka = await loadgen(srv.port, ['--mode', 'keepalive', '--connections', '32', '--ips', '32'], DURATION);
      out.kaRps = ka.rps;
      if (errorCount(ka)) out.errors.push(`keepalive: ${errorSummary(ka)}`);
    }
  } finally {
    await srv.stop();
  }
  return out;
}

async function measureSocketIo(setup) {
  const srv = await startSetup(setup, { SOCKETIO: '1' });
  try {
    // The primary's CPU from the start of the measured run (after the warm-up) to its end.
    let cpuAtStart = null;
    const onLine = (line) => {
      if (line.includes('"measuring"')) cpuAtStart = cpuNs(srv.pid);
    };
    const { out } = await runChild(
      process.execPath,
      [
        SESSIONS,
        '--port',
        String(srv.port),
        '--ips',
        String(SIO_IPS),
        '--duration',
        String(DURATION),
        '--concurrency',
        SMOKE ? '8' : '32',
        '--warmup',
        SMOKE ? '200' : '1000',
        '--json',
      ],
      DURATION + 60000,
      onLine,
    );
    const cpuAtEnd = cpuNs(srv.pid);
    const r = JSON.parse(out.trim().split('\n').pop());
    return {
      sioPrimaryUs: cpuAtStart === null || !r.sessions ? null : (cpuAtEnd - cpuAtStart) / 1000 / r.sessions,
      sioSuccess: 100 * r.success,
      sioRate: r.sessionsPerSec,
      sioSessions: r.sessions,
      sioAddresses: r.addresses,
      sioFailures: r.failures,
    };
  } finally {
    await srv.stop();
  }
}

async function measure(setup, rep) {
  const result = { rep };
  const t0 = Date.now();
  if (want('close') || want('rate') || want('keepalive')) {
    try {
      Object.assign(result, await measureHttp(setup));
    } catch (err) {
      result.httpFailure = failureText(err);
    }
  }
  if (want('socketio')) {
    try {
      Object.assign(result, await measureSocketIo(setup));
    } catch (err) {
      result.sioFailure = failureText(err);
    }
  }
  const show = (x, d = 0) => (x == null ? '-' : x.toFixed(d));
  console.log(
    `  ${setup.id.padEnd(16)} rep ${rep + 1}: ${show(result.closeRps)} conn/s, TTFB mean ${show(result.mean, 2)} ms, ` +
      `keep-alive ${show(result.kaRps)} req/s, Socket.IO ${show(result.sioSuccess, 1)}% ${show(result.sioRate)} sessions/s, ` +
      `primary ${show(result.primaryUs, 1)} µs/conn (${((Date.now() - t0) / 1000).toFixed(1)} s)` +
      `${result.httpFailure ? ` HTTP FAILED: ${result.httpFailure}` : ''}${result.sioFailure ? ` SOCKET.IO FAILED: ${result.sioFailure}` : ''}`,
  );
  return result;
}

// ---- report
const FIGURES = [
  { key: 'closeRps', name: 'new conn/s', unit: '', d: 0, better: 'higher' },
  { key: 'p50', name: 'TTFB p50 @1k/s', unit: 'ms', d: 2, better: 'lower' },
  { key: 'p99', name: 'TTFB p99 @1k/s', unit: 'ms', d: 2, better: 'lower' },
  { key: 'mean', name: 'TTFB mean @1k/s', unit: 'ms', d: 2, better: 'lower' },
  { key: 'rateDone', name: 'completed @1k/s', unit: '%', d: 1, better: 'higher' },
  { key: 'kaRps', name: 'keep-alive req/s', unit: '', d: 0, better: 'higher' },
  { key: 'sioSuccess', name: 'Socket.IO success', unit: '%', d: 1, better: 'higher' },
  { key: 'sioRate', name: 'Socket.IO sessions/s', unit: '', d: 0, better: 'higher' },
  { key: 'primaryUs', name: 'primary CPU', unit: 'µs/conn', d: 1, better: 'lower' },
  { key: 'sioPrimaryUs', name: 'primary CPU per Socket.IO session', unit: 'µs', d: 1, better: 'lower' },
  { key: 'workersUs', name: 'workers CPU', unit: 'µs/conn', d: 1, better: 'lower' },
  { key: 'totalUs', name: 'total CPU', unit: 'µs/conn', d: 1, better: 'lower' },
  { key: 'rssMb', name: 'primary RSS', unit: 'MB', d: 1, better: 'lower' },
];
const fmt = (x, d) => (x == null ? '—' : x.toFixed(d));
const ratio = (x, base) => (x == null || base == null || base === 0 ? null : x / base);

function summarize(runs) {
  const med = {};
  for (const s of setups) {
    med[s.id] = {};
    for (const f of FIGURES) med[s.id][f.key] = median(runs[s.id].map((r) => r[f.key]));
  }
  return med;
}

function targets(med) {
  const rs = med['sticky-rs'] || {};
  const lines = [];
  const check = (name, ok, detail) => lines.push(`- ${ok == null ? 'n/a' : ok ? 'MET' : 'MISSED'}: ${name}: ${detail}`);
  const r = (id, key) => ratio(rs[key], med[id]?.[key]);
  for (const [id, need] of [
    ['sticky-session', 1.5],
    ['sticky-cluster', 1.5],
    ['cluster-rr', 1.0],
  ]) {
    const x = r(id, 'closeRps');
    check(
      `new-connection rate >= ${need}x ${id}`,
      x == null ? null : x >= need,
      x == null ? 'no data' : `${fmt(rs.closeRps, 0)} vs ${fmt(med[id].closeRps, 0)} conn/s = ${x.toFixed(2)}x`,
    );
  }
  // Kernel dispatch (the default on Linux): the primary is off the connection path.
  check('primary CPU <= 0.5 µs/conn', rs.primaryUs == null ? null : rs.primaryUs <= 0.5, `${fmt(rs.primaryUs, 2)} µs/conn`);
  for (const [id, need] of [
    ['cluster-none', 0.95],
    ['sticky-rs-primary', 1.15],
  ]) {
    const x = r(id, 'closeRps');
    check(
      `new-connection rate >= ${need}x ${id}`,
      x == null ? null : x >= need,
      x == null ? 'no data' : `${fmt(rs.closeRps, 0)} vs ${fmt(med[id].closeRps, 0)} conn/s = ${x.toFixed(2)}x`,
    );
  }
  {
    // The limit of a sticky design (plain SO_REUSEPORT processes): the median of the per-repetition
    // ratios, each from one interleaved pair, so that drift between repetitions cancels out.
    const pairs = (lastRuns['sticky-rs'] || [])
      .map((x, i) => ratio(x.closeRps, lastRuns.reuseport?.[i]?.closeRps))
      .filter((x) => x != null);
    const x = median(pairs);
    check(
      "new-connection rate >= 0.97x reuseport (median of the repetitions' pair ratios)",
      x == null ? null : x >= 0.97,
      x == null ? 'no data' : `${pairs.map((p) => `${p.toFixed(3)}x`).join(', ')}; median ${x.toFixed(3)}x`,
    );
  }
  {
    const single = med.single?.mean;
    check(
      'mean TTFB at 1,000 conn/s <= single process + 0.05 ms',
      rs.mean == null || single == null ? null : rs.mean <= single + 0.05,
      `${fmt(rs.mean, 3)} ms vs ${fmt(single, 3)} ms (+${rs.mean == null || single == null ? '—' : (rs.mean - single).toFixed(3)} ms)`,
    );
  }
  {
    // The router (dispatch 'primary'), which routeBy header/PROXY/sid and non-Linux use.
    const p = med['sticky-rs-primary'] || {};
    check(
      "dispatch 'primary': primary CPU <= 15 µs/conn",
      p.primaryUs == null ? null : p.primaryUs <= 15,
      `${fmt(p.primaryUs, 1)} µs/conn`,
    );
  }
  {
    const x = r('cluster-rr', 'kaRps');
    check(
      'keep-alive req/s within 5% of cluster round-robin (>= 0.95x)',
      x == null ? null : x >= 0.95,
      x == null ? 'no data' : `${fmt(rs.kaRps, 0)} vs ${fmt(med['cluster-rr'].kaRps, 0)} req/s = ${x.toFixed(3)}x`,
    );
  }
  {
    const runs = (lastRuns['sticky-rs'] || []).filter((x) => x.sioSessions > 0);
    const addresses = Math.min(...runs.map((x) => x.sioAddresses || 0));
    const allOk = runs.length > 0 && runs.every((x) => x.sioSuccess === 100);
    check(
      `Socket.IO polling sessions 100% success from >= 200 addresses`,
      runs.length ? allOk && addresses >= 200 : null,
      `${runs.map((x) => `${fmt(x.sioSuccess, 1)}%`).join(', ')} over repetitions, ${addresses} addresses`,
    );
    const peers = SETUPS.filter((s) => s.peer && med[s.id] && med[s.id].sioRate != null);
    const best = peers.sort((a, b) => med[b.id].sioRate - med[a.id].sioRate)[0];
    const x = best ? ratio(rs.sioRate, med[best.id].sioRate) : null;
    check(
      'Socket.IO sessions/s >= 1.3x the best sticky peer',
      x == null ? null : x >= 1.3,
      x == null ? 'no data' : `${fmt(rs.sioRate, 0)} vs ${best.id} ${fmt(med[best.id].sioRate, 0)} sessions/s = ${x.toFixed(2)}x`,
    );
  }
  {
    // The third drop-in: setupMaster/setupWorker against @socket.io/sticky, same app code.
    const sid = med['sticky-rs-sid'] || {};
    const peer = med['socketio-sticky'] || {};
    const x = ratio(sid.sioRate, peer.sioRate);
    check(
      "setupMaster (routeBy 'sid') Socket.IO sessions/s >= 1.5x @socket.io/sticky",
      x == null ? null : x >= 1.5,
      x == null ? 'no data' : `${fmt(sid.sioRate, 0)} vs ${fmt(peer.sioRate, 0)} sessions/s = ${x.toFixed(2)}x`,
    );
    const c = ratio(sid.sioPrimaryUs, peer.sioPrimaryUs);
    check(
      "setupMaster (routeBy 'sid') primary CPU per session <= 1/3 of @socket.io/sticky's",
      c == null ? null : c <= 1 / 3,
      c == null ? 'no data' : `${fmt(sid.sioPrimaryUs, 1)} vs ${fmt(peer.sioPrimaryUs, 1)} µs/session = ${c.toFixed(2)}x`,
    );
  }
  return lines;
}

function markdown(runs, med, meta) {
  const L = [];
  L.push(
    `# sticky-rs connection benchmark${SMOKE ? ' (smoke)' : PARTIAL ? ` (partial: ${setups.map((s) => s.id).join(', ')}; ${[...FIGURE_SET].join(', ')})` : ''}`,
    '',
  );
  L.push(`- date: ${meta.date}`);
  L.push(`- machine: ${meta.cpu}, ${meta.cores} cores, ${meta.os}`);
  L.push(`- Node ${process.version}; ${WORKERS} workers; ${REPS} repetitions, setups interleaved; medians`);
  L.push(`- ${DURATION} ms per figure; loadgen (bench/loadgen) and the Socket.IO client run on the same machine`);
  L.push(`- load average at start / end: ${meta.loadStart} / ${meta.loadEnd}`);
  L.push(
    `- sticky-rs: git ${meta.git}; addon ${meta.addonStart}` +
      (meta.addonEnd !== meta.addonStart
        ? ` — **WARNING: the addon was rebuilt during the run (now ${meta.addonEnd}); the repetitions mix builds**`
        : ''),
    '',
  );
  L.push(
    'Figures: **new conn/s**: `loadgen --mode close --connections 32 --ips ' +
      CLOSE_IPS +
      '` (one request per connection); ' +
      '**TTFB @1k/s**: `loadgen --mode rate --rate 1000 --ips ' +
      CLOSE_IPS +
      '` (from connect start; only completed requests have a TTFB, **completed** is the share of the scheduled connections answered within the run, a setup that cannot keep up has TTFBs that grow with the run); ' +
      '**keep-alive**: `loadgen --mode keepalive --connections 32 --ips 32`; ' +
      '**Socket.IO**: `bench/socketio-sessions.js` from ' +
      SIO_IPS +
      ' addresses, handshake + connect + 2 polls + message, one TCP connection per request; ' +
      '**CPU**: /proc/<pid>/task/*/schedstat over the close run, per completed connection (the single process counts as workers); ' +
      "**RSS**: the primary's VmRSS after the close run.",
    '',
  );
  const head = `| setup | ${FIGURES.map((f) => `${f.name}${f.unit ? ` (${f.unit})` : ''}`).join(' | ')} |`;
  const sep = `|---|${FIGURES.map(() => '---:').join('|')}|`;
  L.push('## Medians', '', head, sep);
  for (const s of setups) L.push(`| ${s.label} | ${FIGURES.map((f) => fmt(med[s.id][f.key], f.d)).join(' | ')} |`);
  L.push('', '## Ratio to sticky-rs (setup / sticky-rs)', '');
  L.push(`| setup | ${FIGURES.map((f) => `${f.name} (${f.better} is better)`).join(' | ')} |`, sep);
  const rs = med['sticky-rs'] || {};
  for (const s of setups)
    L.push(
      `| ${s.label} | ${FIGURES.map((f) => {
        const x = ratio(med[s.id][f.key], rs[f.key]);
        return x == null ? '—' : `${x.toFixed(2)}x`;
      }).join(' | ')} |`,
    );
  L.push('', '## Targets (sticky-rs)', '', ...targets(med));
  L.push('', '## Failures and errors', '');
  let any = false;
  for (const s of setups) {
    for (const r of runs[s.id]) {
      const notes = [];
      if (r.httpFailure) notes.push(`HTTP setup failed: \`${r.httpFailure}\``);
      if (r.sioFailure) notes.push(`Socket.IO setup failed: \`${r.sioFailure}\``);
      if (r.errors?.length) notes.push(...r.errors);
      if (r.sioFailures && Object.keys(r.sioFailures).length) {
        notes.push(
          `Socket.IO ${r.sioSessions - Math.round((r.sioSuccess / 100) * r.sioSessions)}/${r.sioSessions} sessions failed: ` +
            Object.entries(r.sioFailures)
              .sort((a, b) => b[1] - a[1])
              .map(([k, n]) => `${n} x ${k}`)
              .join('; '),
        );
      }
      if (notes.length) {
        any = true;
        L.push(`- ${s.label}, rep ${r.rep + 1}: ${notes.join('; ')}`);
      }
    }
  }
  if (!any) L.push('- none');
  L.push(
    '',
    '## Every repetition',
    '',
    `| setup | rep | ${FIGURES.map((f) => f.name).join(' | ')} |`,
    `|---|---:|${FIGURES.map(() => '---:').join('|')}|`,
  );
  for (const s of setups)
    for (const r of runs[s.id]) L.push(`| ${s.id} | ${r.rep + 1} | ${FIGURES.map((f) => fmt(r[f.key], f.d)).join(' | ')} |`);
  L.push('');
  return L.join('\n');
}

// Diverging bars on a log2 scale around 1.0 (= sticky-rs); green where sticky-rs is better.
function svg(med, meta) {
  const figs = FIGURES.filter((f) => !['sioSuccess', 'workersUs', 'rateDone', 'p50'].includes(f.key));
  const others = setups.filter((s) => !s.own);
  const rs = med['sticky-rs'] || {};
  const barH = 14;
  const groupH = others.length * (barH + 3) + 26;
  const left = 230;
  const width = 900;
  const plotW = width - left - 90;
  const cx = left + plotW / 2;
  const maxLog = 3; // 1/8x .. 8x
  const x = (r) => cx + (Math.max(-maxLog, Math.min(maxLog, Math.log2(r))) / maxLog) * (plotW / 2);
  const height = 70 + figs.length * groupH + 20;
  const esc = (t) => String(t).replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');
  const o = [];
  o.push(
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" font-family="sans-serif" font-size="11">`,
  );
  o.push(`<rect width="100%" height="100%" fill="white"/>`);
  o.push(
    `<text x="10" y="18" font-size="14" font-weight="bold">${esc(`Ratio to sticky-rs (setup / sticky-rs), log scale; ${meta.date}, ${meta.cpu} x${meta.cores}, Node ${process.version}`)}</text>`,
  );
  o.push(
    `<text x="10" y="34" fill="#555">${esc('green: sticky-rs is better on this figure; red: worse. Bars clipped at 1/8x and 8x.')}</text>`,
  );
  for (const t of [0.125, 0.25, 0.5, 1, 2, 4, 8]) {
    o.push(`<line x1="${x(t).toFixed(1)}" y1="50" x2="${x(t).toFixed(1)}" y2="${height - 20}" stroke="${t === 1 ? '#000' : '#ddd'}"/>`);
    o.push(`<text x="${x(t).toFixed(1)}" y="${height - 6}" text-anchor="middle" fill="#555">${t < 1 ? `1/${1 / t}` : t}x</text>`);
  }
  let y = 62;
  for (const f of figs) {
    o.push(`<text x="10" y="${y + 8}" font-weight="bold">${esc(`${f.name}${f.unit ? ` (${f.unit})` : ''}, ${f.better} is better`)}</text>`);
    o.push(`<text x="10" y="${y + 20}" fill="#555">${esc(`sticky-rs: ${fmt(rs[f.key], f.d)}`)}</text>`);
    y += 24;
    for (const s of others) {
      const r = ratio(med[s.id][f.key], rs[f.key]);
      o.push(`<text x="${left - 8}" y="${y + barH - 3}" text-anchor="end">${esc(s.label)}</text>`);
      if (r == null || r <= 0) {
        o.push(`<text x="${cx + 4}" y="${y + barH - 3}" fill="#999">${r === 0 ? '0 (none)' : 'n/a'}</text>`);
      } else {
        const rsBetter = f.better === 'higher' ? r < 1 : r > 1;
        const x0 = Math.min(cx, x(r));
        const w = Math.max(1, Math.abs(x(r) - cx));
        o.push(
          `<rect x="${x0.toFixed(1)}" y="${y}" width="${w.toFixed(1)}" height="${barH}" fill="${Math.abs(r - 1) < 0.005 ? '#999' : rsBetter ? '#3a9a4a' : '#c8463c'}"/>`,
        );
        // label beyond the bar's end; inside it (white) where that would run into the names
        const inside = r < 1 && x(r) - 44 < left;
        const lx = r >= 1 ? x(r) + 4 : inside ? x(r) + 4 : x(r) - 4;
        o.push(
          `<text x="${lx.toFixed(1)}" y="${y + barH - 3}" text-anchor="${r >= 1 || inside ? 'start' : 'end'}"${inside ? ' fill="white"' : ''}>${r.toFixed(2)}x</text>`,
        );
      }
      y += barH + 3;
    }
    y += 2;
  }
  o.push('</svg>');
  return `${o.join('\n')}\n`;
}

// The addon under test: the working tree is shared, so record which build ran (and if it changed).
function addonId() {
  try {
    const file = path.join(ROOT, 'sticky_rs.node');
    const hash = require('node:crypto').createHash('sha256').update(fs.readFileSync(file)).digest('hex').slice(0, 12);
    return `sha256 ${hash}, built ${fs.statSync(file).mtime.toISOString().slice(0, 19)}Z`;
  } catch (err) {
    return `unreadable (${err.code || err.message})`;
  }
}
function gitId() {
  const git = (args) => spawnSync('git', args, { cwd: ROOT, encoding: 'utf8' });
  const head = git(['rev-parse', '--short', 'HEAD']);
  if (head.status !== 0) return 'not a git checkout';
  const dirty = git(['status', '--porcelain', '--', 'src', 'lib', 'index.js', 'Cargo.toml', 'Cargo.lock']).stdout.trim();
  return `${head.stdout.trim()}${dirty ? ' + uncommitted changes in src/lib' : ''}`;
}

// ---- main
let lastRuns = {};
async function main() {
  if (process.platform !== 'linux') throw new Error('bench/run.js reads /proc: Linux only');
  if (!fs.existsSync(LOADGEN)) {
    console.log('building loadgen (cargo build --release --manifest-path bench/loadgen/Cargo.toml)...');
    const r = spawnSync('cargo', ['build', '--release', '--manifest-path', path.join(__dirname, 'loadgen', 'Cargo.toml')], {
      stdio: 'inherit',
    });
    if (r.status !== 0) throw new Error('building loadgen failed');
  }
  const meta = {
    date: new Date().toISOString().slice(0, 10),
    cpu: os.cpus()[0].model.trim(),
    cores: os.cpus().length,
    os: `${os.type()} ${os.release()} ${os.arch()}`,
    loadStart: os
      .loadavg()
      .map((x) => x.toFixed(2))
      .join(' '),
    git: gitId(),
    addonStart: addonId(),
  };
  console.log(`${SMOKE ? 'smoke: ' : ''}${setups.length} setups x ${REPS} repetitions, ${DURATION} ms per figure, ${WORKERS} workers`);
  const runs = Object.fromEntries(setups.map((s) => [s.id, []]));
  lastRuns = runs;
  const started = Date.now();
  for (let rep = 0; rep < REPS; rep++) for (const s of setups) runs[s.id].push(await measure(s, rep));
  meta.loadEnd = os
    .loadavg()
    .map((x) => x.toFixed(2))
    .join(' ');
  meta.addonEnd = addonId();
  const med = summarize(runs);
  const md = markdown(runs, med, meta);
  fs.mkdirSync(OUT, { recursive: true });
  const written = [];
  const write = (name, text) => {
    const file = path.join(OUT, name);
    fs.writeFileSync(`${file}.tmp`, text);
    fs.renameSync(`${file}.tmp`, file);
    written.push(path.relative(process.cwd(), file) || file);
  };
  if (PARTIAL) {
    write('partial.md', md);
    write('partial.svg', svg(med, meta));
  } else {
    if (!SMOKE) write(`${meta.date}.md`, md);
    write('latest.md', md);
    write('latest.svg', svg(med, meta));
  }
  console.log(`\n${md}`);
  console.log(`written: ${written.join(', ')} (${((Date.now() - started) / 1000).toFixed(0)} s)`);

  if (SMOKE) {
    const problems = [];
    for (const s of setups) {
      for (const r of runs[s.id]) {
        const missing = ['closeRps', 'mean', 'kaRps', 'sioRate'].filter((k) => !(r[k] > 0) && !(k === 'sioRate' && r.sioSessions > 0));
        const recorded = r.httpFailure || r.sioFailure;
        if (s.own || s.baseline) {
          if (missing.length || recorded)
            problems.push(`${s.id}: no ${missing.join(', ') || 'numbers'}${recorded ? ` (${recorded})` : ''}`);
          if (s.own && r.sioSuccess !== 100) problems.push(`${s.id}: Socket.IO success ${fmt(r.sioSuccess, 1)}%, expected 100%`);
        } else if (missing.length && !recorded) {
          console.log(`warning: ${s.id} produced no ${missing.join(', ')} and no recorded failure`);
        }
      }
    }
    if (problems.length) {
      console.error(`smoke FAILED:\n  ${problems.join('\n  ')}`);
      process.exitCode = 1;
    } else {
      console.log('smoke ok: every setup produced numbers or a recorded failure');
    }
  }
}

main().catch((err) => {
  console.error(err);
  killAll();
  process.exit(1);
});
