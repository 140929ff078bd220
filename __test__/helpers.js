'use strict';
// Shared by the jest suites: fixture primaries as child processes (never cluster.fork() inside
// jest), clients from distinct loopback addresses, and cleanup that runs even when a test fails.
const { spawn } = require('node:child_process');
const fs = require('node:fs');
const http = require('node:http');
const net = require('node:net');
const path = require('node:path');
const readline = require('node:readline');
const stringHash = require('string-hash');

const FIXTURES = path.join(__dirname, 'fixtures');
const running = new Set();

/** A port that was free a moment ago (the fixture binds it itself). */
function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.on('error', reject);
    s.listen(0, '::', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

/** The i-th distinct client address: 127.0.x.y with x >= 1 and y in 1..250. */
function clientIp(i) {
  return `127.0.${1 + Math.floor(i / 250)}.${1 + (i % 250)}`;
}

/**
 * Starts a fixture script as its own process group. The fixture prints JSON lines on stdout;
 * `next(predicate)` waits for a matching one. `stop()` kills the whole group.
 */
function startFixture(script, env = {}, { fdLimit } = {}) {
  // With fdLimit, the fixture runs under `ulimit -n` (its workers inherit the limit).
  const command = fdLimit ? '/bin/sh' : process.execPath;
  const args = fdLimit
    ? ['-c', `ulimit -n ${fdLimit} && exec "$0" "$1"`, process.execPath, path.join(FIXTURES, script)]
    : [path.join(FIXTURES, script)];
  const child = spawn(command, args, {
    env: { ...process.env, ...env },
    stdio: ['pipe', 'pipe', 'pipe'],
    detached: true,
  });
  const events = [];
  const waiters = [];
  let stderr = '';
  child.stderr.on('data', (d) => {
    stderr += d;
  });
  readline.createInterface({ input: child.stdout }).on('line', (line) => {
    let event;
    try {
      event = JSON.parse(line);
    } catch {
      return;
    }
    events.push(event);
    for (const w of [...waiters]) {
      if (w.predicate(event)) {
        waiters.splice(waiters.indexOf(w), 1);
        w.resolve(event);
      }
    }
  });
  const exited = new Promise((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })));
  const fixture = {
    child,
    events,
    exited,
    get stderr() {
      return stderr;
    },
    /** Resolves with the first event (past or future) matching `predicate`. */
    next(predicate, timeout = 20000) {
      const seen = events.find(predicate);
      if (seen) return Promise.resolve(seen);
      return new Promise((resolve, reject) => {
        const w = { predicate, resolve };
        waiters.push(w);
        const timer = setTimeout(() => {
          waiters.splice(waiters.indexOf(w), 1);
          reject(new Error(`${script}: no matching event in ${timeout} ms; events: ${JSON.stringify(events)}; stderr: ${stderr}`));
        }, timeout);
        const done = w.resolve;
        w.resolve = (e) => {
          clearTimeout(timer);
          done(e);
        };
      });
    },
    /** Resolves once the fixture's stderr matches `regex`; throws after `timeout` ms. */
    said(regex, timeout = 5000) {
      return until(`stderr matching ${regex}`, () => regex.test(stderr), timeout);
    },
    /** Waits until `count` events of `type` were seen. */
    async count(type, count, timeout = 20000) {
      let n = 0;
      return fixture.next((e) => e.event === type && ++n >= count, timeout);
    },
    /** Sends a command line to the fixture (see cluster-app.js). */
    command(line) {
      child.stdin.write(`${line}\n`);
    },
    /** Asks the primary for its counters. */
    async stats() {
      const before = events.filter((e) => e.event === 'stats').length;
      child.stdin.write('stats\n');
      let n = 0;
      return fixture.next((e) => e.event === 'stats' && ++n > before);
    },
    /**
     * The primary's counters once `predicate(stats)` holds, or the last ones after `timeout` ms
     * (for the caller's assertions to show). With kernel dispatch the workers report what they
     * accepted themselves every 100 ms at most, so the counters trail the answers.
     */
    async statsWhen(predicate, timeout = 5000) {
      const deadline = Date.now() + timeout;
      for (;;) {
        const stats = await fixture.stats();
        if (predicate(stats) || Date.now() > deadline) return stats;
        await new Promise((r) => setTimeout(r, 20));
      }
    },
    /** CPU time of all the primary's threads so far, in ms. */
    cpuMs() {
      let ns = 0;
      for (const task of fs.readdirSync(`/proc/${child.pid}/task`)) {
        try {
          ns += Number(fs.readFileSync(`/proc/${child.pid}/task/${task}/schedstat`, 'utf8').split(' ')[0]);
        } catch {}
      }
      return ns / 1e6;
    },
    /** Resolves once the router holds no connection (none queued, none unacknowledged). */
    async atRest(timeout = 5000) {
      const rest = ({ slots }) => slots.every((s) => s.queued === 0 && s.inFlight === 0);
      const stats = await fixture.statsWhen(rest, timeout);
      if (!rest(stats)) throw new Error(`router not at rest after ${timeout} ms: ${JSON.stringify(stats.slots)}`);
    },
    /** The primary's open descriptors. */
    fdCount() {
      return fs.readdirSync(`/proc/${child.pid}/fd`).length;
    },
    stop() {
      running.delete(fixture);
      if (child.exitCode === null && child.signalCode === null) {
        try {
          process.kill(-child.pid, 'SIGKILL');
        } catch {}
      }
      return exited;
    },
  };
  running.add(fixture);
  return fixture;
}

/**
 * The ops-app.js fixture through `api`: 'listen' (sticky-session's `listen(server, port,
 * { workers })`) or 'sticky' (sticky-cluster's `sticky(start, { concurrency, port })`), with
 * `workers` and the other sticky-rs `options`; `env` adds to its environment.
 */
function startOpsApp(api, port, { workers = 2, ...options } = {}, env = {}) {
  const listen = api === 'listen';
  const all = listen ? { workers, ...options } : { concurrency: workers, port, ...options };
  return startFixture('ops-app.js', { API: api, ...(listen ? { PORT: String(port) } : {}), ...env, OPTIONS: JSON.stringify(all) });
}

/** Kills every fixture still running (register with afterEach/afterAll). */
async function stopAll() {
  await Promise.all([...running].map((f) => f.stop()));
}

/** GET `path` from `ip`; resolves { status, body } with the body parsed as JSON when it is. */
function get(port, ip, urlPath = '/', { agent = false, host = '127.0.0.1', timeout = 10000 } = {}) {
  return new Promise((resolve, reject) => {
    const req = http.get({ host, port, path: urlPath, localAddress: ip, agent }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (c) => (body += c));
      res.on('end', () => {
        let parsed = body;
        try {
          parsed = JSON.parse(body);
        } catch {}
        resolve({ status: res.statusCode, body: parsed });
      });
    });
    req.setTimeout(timeout, () => req.destroy(new Error(`GET ${urlPath} from ${ip}: no answer in ${timeout} ms`)));
    req.on('error', reject);
  });
}

/**
 * A set of client sockets and agents: `track(x)` adds one and returns it, `closeAll()` closes
 * them all (socket.io sockets are disconnected, the rest destroyed). For afterEach, so clients
 * close even when a test failed.
 */
function clientSet() {
  const open = new Set();
  return {
    track(x) {
      open.add(x);
      return x;
    },
    closeAll() {
      for (const x of open) {
        try {
          if (typeof x.disconnect === 'function') x.disconnect();
          else x.destroy();
        } catch {}
      }
      open.clear();
    },
  };
}

/** Runs `fn` over `items` with at most `limit` in flight. */
async function pool(items, limit, fn) {
  const results = new Array(items.length);
  let next = 0;
  const workers = Array.from({ length: Math.min(limit, items.length) }, async () => {
    while (next < items.length) {
      const i = next++;
      results[i] = await fn(items[i], i);
    }
  });
  await Promise.all(workers);
  return results;
}

/** The slot sticky-cluster gives client `ip` on the default dual-stack listener. */
function slotOf(ip, slots) {
  return stringHash(`::ffff:${ip}`) % slots;
}

/** The first `n` client addresses from clientIp(from) on that land on `slot` of `slots`. */
function ipsOf(slot, slots, n, from = 0) {
  const ips = [];
  for (let i = from; ips.length < n; i++) if (slotOf(clientIp(i), slots) === slot) ips.push(clientIp(i));
  return ips;
}

/** The sum of one counter over every slot of `stats`. */
function total(stats, counter) {
  return stats.slots.reduce((n, s) => n + s[counter], 0);
}

/**
 * Builds a library for LD_PRELOAD whose setsockopt() fails with ENOPROTOOPT for one option, as a
 * kernel or sandbox without it answers (`level` is C text: 'SOL_SOCKET', 'IPPROTO_TCP'). Returns
 * its path and `remove()`, which deletes it.
 */
function refusingSockopt(level, name) {
  const os = require('node:os');
  const { spawnSync } = require('node:child_process');
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'sticky-rs-shim-'));
  const remove = () => fs.rmSync(dir, { recursive: true, force: true });
  fs.writeFileSync(
    path.join(dir, 'shim.c'),
    `#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <netinet/in.h>
#include <sys/socket.h>
int setsockopt(int fd, int level, int name, const void *value, socklen_t len) {
  static int (*real)(int, int, int, const void *, socklen_t);
  if (level == ${level} && name == ${name}) { errno = ENOPROTOOPT; return -1; }
  if (!real) real = (int (*)(int, int, int, const void *, socklen_t))dlsym(RTLD_NEXT, "setsockopt");
  return real(fd, level, name, value, len);
}
`,
  );
  const built = spawnSync('cc', ['-shared', '-fPIC', '-o', path.join(dir, 'shim.so'), path.join(dir, 'shim.c'), '-ldl'], {
    encoding: 'utf8',
  });
  if (built.status !== 0 || built.stderr) {
    remove();
    throw new Error(`building the setsockopt shim failed: ${built.stderr || built.error}`);
  }
  return { path: path.join(dir, 'shim.so'), remove };
}

/** Whether a process with this pid exists. */
function alive(pid) {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

/**
 * The processes alive now, from /proc: `{ pid, name, state, ppid, pgid }` each (zombies, state
 * 'Z', included: callers that want the living filter them out).
 */
function processes() {
  const found = [];
  for (const entry of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    let stat;
    try {
      stat = fs.readFileSync(`/proc/${entry}/stat`, 'utf8');
    } catch {
      continue; // gone meanwhile
    }
    const close = stat.lastIndexOf(')');
    const [state, ppid, pgid] = stat.slice(close + 2).split(' ');
    found.push({ pid: Number(entry), name: stat.slice(stat.indexOf('(') + 1, close), state, ppid: Number(ppid), pgid: Number(pgid) });
  }
  return found;
}

/** 0, 1, ... n - 1 (from `from` on). */
function range(n, from = 0) {
  return Array.from({ length: n }, (_, i) => from + i);
}

/**
 * Waits `ms`. Only where time itself is what a test checks (a bound, something that must NOT
 * happen within a while) or paces a load; a condition is waited for with until().
 */
function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** `promise`'s value, or 'timeout' after `ms` (the timer does not outlive the race). */
function within(promise, ms) {
  let timer;
  const late = new Promise((resolve) => {
    timer = setTimeout(() => resolve('timeout'), ms);
  });
  return Promise.race([promise, late]).finally(() => clearTimeout(timer));
}

/** Resolves with what `fn` (may be async) returns once truthy, polled every 20 ms; throws `what` after `timeout` ms. */
async function until(what, fn, timeout = 5000) {
  const deadline = Date.now() + timeout;
  for (;;) {
    const value = await fn();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`${what}: not within ${timeout} ms`);
    await sleep(20);
  }
}

module.exports = {
  processes,
  range,
  sleep,
  within,
  until,
  freePort,
  clientIp,
  startFixture,
  startOpsApp,
  stopAll,
  get,
  pool,
  clientSet,
  slotOf,
  ipsOf,
  total,
  alive,
  refusingSockopt,
};
