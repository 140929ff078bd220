'use strict';
// What closing every response costs with routeBy 'sid' (issue 18.1): keep-alive clients, each
// from its own address, send GET / one after another for --duration ms; requests/s and the new
// TCP connections per request, for sticky-rs by address (keep-alive kept), sticky-rs's
// setupMaster (sid: every response closes its connection) and @socket.io/sticky (the same, by
// design), each --reps times in one run (medians; ratios to the first setup).
// usage: node bench/sid-keepalive.js [--clients 32] [--duration 3000] [--reps 3] [--workers 2]
const http = require('node:http');
const { freePort } = require('./common');
const path = require('node:path');
const { spawn } = require('node:child_process');
const readline = require('node:readline');

const argv = process.argv.slice(2);
const args = Object.fromEntries(argv.flatMap((a, i) => (a.startsWith('--') ? [[a.slice(2), argv[i + 1]]] : [])));
const CLIENTS = Number(args.clients || 32);
const DURATION = Number(args.duration || 3000);
const REPS = Number(args.reps || 3);
const WORKERS = Number(args.workers || 2);
const SETUPS = ['sticky-rs', 'sticky-rs-sid', 'socketio-sticky'];

async function start(setup, port) {
  const child = spawn(process.execPath, [path.join(__dirname, 'apps', 'server.js')], {
    env: { ...process.env, SETUP: setup, PORT: String(port), WORKERS: String(WORKERS), SOCKETIO: '1' },
    stdio: ['ignore', 'pipe', 'inherit'],
    detached: true,
  });
  await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`${setup}: not listening in 20 s`)), 20000);
    readline.createInterface({ input: child.stdout }).on('line', (line) => {
      if (line.includes('"listening"')) {
        clearTimeout(timer);
        resolve();
      }
    });
    child.once('exit', (code) => reject(new Error(`${setup} exited with ${code}`)));
  });
  return child;
}

function stop(child) {
  return new Promise((resolve) => {
    if (child.exitCode !== null || child.signalCode !== null) return resolve();
    const timer = setTimeout(() => process.kill(-child.pid, 'SIGKILL'), 5000);
    child.once('exit', () => {
      clearTimeout(timer);
      resolve();
    });
    process.kill(-child.pid, 'SIGTERM');
  });
}

/** One client: sequential GETs until `until`; counts requests and the connections they opened. */
async function client(port, ip, until, totals) {
  const agent = new http.Agent({ keepAlive: true, maxSockets: 1, localAddress: ip });
  agent.on('free', () => {});
  const sockets = new WeakSet();
  while (Date.now() < until) {
    await new Promise((resolve) => {
      const req = http.get({ host: '127.0.0.1', port, path: '/', agent }, (res) => {
        if (!sockets.has(res.socket)) {
          sockets.add(res.socket);
          totals.connections++;
        }
        res.resume();
        res.on('end', () => {
          if (res.statusCode === 200) totals.requests++;
          else totals.errors++;
          resolve();
        });
      });
      req.setTimeout(5000, () => req.destroy(new Error('timeout')));
      req.on('error', () => {
        totals.errors++;
        resolve();
      });
    });
  }
  agent.destroy();
}

async function measure(setup) {
  const port = await freePort();
  const child = await start(setup, port);
  try {
    const totals = { requests: 0, connections: 0, errors: 0 };
    const began = Date.now();
    const until = began + DURATION;
    await Promise.all(Array.from({ length: CLIENTS }, (_, i) => client(port, `127.0.9.${i + 1}`, until, totals)));
    return {
      rps: totals.requests / ((Date.now() - began) / 1000),
      perRequest: totals.connections / Math.max(1, totals.requests),
      errors: totals.errors,
    };
  } finally {
    await stop(child);
  }
}

const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

(async () => {
  const runs = Object.fromEntries(SETUPS.map((s) => [s, []]));
  for (let rep = 0; rep < REPS; rep++) for (const setup of SETUPS) runs[setup].push(await measure(setup));
  const base = median(runs[SETUPS[0]].map((r) => r.rps));
  console.log(`keep-alive clients: ${CLIENTS}, ${WORKERS} workers, ${DURATION} ms x ${REPS} (medians)\n`);
  console.log('| setup | requests/s | vs sticky-rs by address | new connections per request | errors |');
  console.log('|---|---|---|---|---|');
  for (const setup of SETUPS) {
    const rps = median(runs[setup].map((r) => r.rps));
    const per = median(runs[setup].map((r) => r.perRequest));
    const errors = runs[setup].reduce((n, r) => n + r.errors, 0);
    console.log(`| ${setup} | ${rps.toFixed(0)} | ${(rps / base).toFixed(2)}x | ${per.toFixed(3)} | ${errors} |`);
  }
})().catch((err) => {
  console.error(err);
  process.exit(1);
});
