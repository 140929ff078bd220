'use strict';
// Primary CPU per new connection, sticky-rs against the packages it replaces, in one run.
// usage: node bench/primary-cpu.js [connections=4000] [repetitions=3]
// Each connection is one request with `Connection: close` from one of 100 loopback addresses.
// CPU is read from /proc/<pid>/task/*/schedstat (ns, all threads of the primary).
const { spawn } = require('node:child_process');
const fs = require('node:fs');
const http = require('node:http');
const { freePort } = require('./common');
const path = require('node:path');
const readline = require('node:readline');

const CONNECTIONS = Number(process.argv[2] || 4000);
const REPETITIONS = Number(process.argv[3] || 3);
const SETUPS = ['sticky-rs', 'sticky-cluster', 'sticky-session'];
const CONCURRENCY = 32;

function cpuNs(pid) {
  let total = 0;
  for (const task of fs.readdirSync(`/proc/${pid}/task`)) {
    try {
      total += Number(fs.readFileSync(`/proc/${pid}/task/${task}/schedstat`, 'utf8').split(' ')[0]);
    } catch {} // a thread that just ended
  }
  return total;
}

function request(port, i) {
  return new Promise((resolve) => {
    const req = http.get(
      { host: '127.0.0.1', port, agent: false, localAddress: `127.0.1.${1 + (i % 100)}`, headers: { connection: 'close' } },
      (res) => {
        res.resume();
        res.on('end', () => resolve(res.statusCode === 200));
      },
    );
    req.setTimeout(10000, () => req.destroy());
    req.on('error', () => resolve(false));
  });
}

async function load(port, count) {
  let next = 0;
  let ok = 0;
  await Promise.all(
    Array.from({ length: CONCURRENCY }, async () => {
      while (next < count) if (await request(port, next++)) ok++;
    }),
  );
  return ok;
}

async function measure(setup) {
  const port = await freePort();
  const child = spawn(process.execPath, [path.join(__dirname, 'apps', 'server.js')], {
    env: { ...process.env, SETUP: setup, PORT: String(port), WORKERS: '2' },
    stdio: ['ignore', 'pipe', 'inherit'],
    detached: true,
  });
  try {
    const pid = await new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`${setup} did not start`)), 20000);
      readline.createInterface({ input: child.stdout }).on('line', (line) => {
        if (line.includes('"listening"')) {
          clearTimeout(timer);
          resolve(JSON.parse(line).pid);
        }
      });
    });
    await load(port, 200); // warm up, and every worker ready
    const before = cpuNs(pid);
    const started = process.hrtime.bigint();
    const ok = await load(port, CONNECTIONS);
    const seconds = Number(process.hrtime.bigint() - started) / 1e9;
    const cpu = cpuNs(pid) - before;
    return { usPerConn: cpu / 1000 / CONNECTIONS, rate: ok / seconds, failed: CONNECTIONS - ok };
  } finally {
    try {
      process.kill(-child.pid, 'SIGKILL');
    } catch {}
  }
}

const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

(async () => {
  const runs = Object.fromEntries(SETUPS.map((s) => [s, []]));
  for (let r = 0; r < REPETITIONS; r++) for (const setup of SETUPS) runs[setup].push(await measure(setup));
  const base = median(runs['sticky-rs'].map((x) => x.usPerConn));
  console.log(`\nPrimary CPU per new connection: ${CONNECTIONS} connections x ${REPETITIONS} runs, 2 workers, median\n`);
  console.log('| setup | primary CPU µs/conn | ratio to sticky-rs | conn/s (client-bound) | failed |');
  console.log('|---|---:|---:|---:|---:|');
  for (const setup of SETUPS) {
    const us = median(runs[setup].map((x) => x.usPerConn));
    const rate = median(runs[setup].map((x) => x.rate));
    const failed = runs[setup].reduce((n, x) => n + x.failed, 0);
    console.log(`| ${setup} | ${us.toFixed(1)} | ${(us / base).toFixed(1)}x | ${rate.toFixed(0)} | ${failed} |`);
  }
})().catch((err) => {
  console.error(err);
  process.exit(1);
});
