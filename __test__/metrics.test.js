'use strict';
// primary.stats() as Prometheus metrics (sticky.prometheus(), prom-client): the values a scrape
// shows are the primary's stats(), with slot labels; the example serves them on METRICS_PORT and
// a real Prometheus server (Debian package `prometheus`) scrapes it.
const { spawn, spawnSync } = require('node:child_process');
const fs = require('node:fs');
const http = require('node:http');
const os = require('node:os');
const path = require('node:path');
const stringHash = require('string-hash');
const { sleep, freePort, clientIp, startFixture, stopAll, get, total } = require('./helpers');
const { startReadyExample, stopAllExamples } = require('./fixtures/example-harness');

const IN_CI = process.env.CI === 'true';

const prometheusBin = ['prometheus', '/usr/bin/prometheus'].find((bin) => spawnSync(bin, ['--version']).status === 0) || null;
let prometheus = null;
let promDir = null;

afterEach(async () => {
  await stopAll();
  await stopAllExamples();
  if (prometheus) {
    try {
      process.kill(-prometheus.pid, 'SIGKILL');
    } catch {}
    prometheus = null;
  }
  if (promDir) fs.rmSync(promDir, { recursive: true, force: true });
  promDir = null;
});

/** The text exposition format: { 'name{a="b"}': value }, and the TYPE of each name. */
function parse(text) {
  const values = {};
  const types = {};
  for (const line of text.split('\n')) {
    const type = /^# TYPE (\S+) (\S+)$/.exec(line);
    if (type) types[type[1]] = type[2];
    if (!line || line.startsWith('#')) continue;
    const m = /^(\S+?)(\{.*\})? (\S+)$/.exec(line);
    values[m[1] + (m[2] || '')] = Number(m[3]);
  }
  return { values, types };
}

function fetchText(port, urlPath) {
  return new Promise((resolve, reject) => {
    http
      .get({ host: '127.0.0.1', port, path: urlPath }, (res) => {
        let body = '';
        res.setEncoding('utf8');
        res.on('data', (c) => (body += c));
        res.on('end', () => resolve({ status: res.statusCode, body }));
      })
      .on('error', reject);
  });
}

test('a scrape shows stats(): per slot (slot label) and process-wide counters, dropped by reason', async () => {
  const [port, metricsPort] = [await freePort(), await freePort()];
  const app = startFixture('ops-app.js', {
    METRICS_PORT: String(metricsPort),
    OPTIONS: JSON.stringify({ concurrency: 2, port, respawnDelay: 10, maxRestarts: 5 }),
  });
  await app.count('ready', 2);
  await app.next((e) => e.event === 'metrics');
  await Promise.all(Array.from({ length: 40 }, (_, i) => get(port, clientIp(i))));
  // One restart of slot 1, once its worker reported what it accepted (kernel dispatch: every
  // 100 ms at most; a worker killed sooner takes its last count with it).
  const before = (await app.statsWhen((s) => total(s, 'accepted') >= 40)).slots.map((s) => s.pid);
  process.kill(before[1], 'SIGKILL');
  await app.next((e) => e.event === 'ready' && e.slot === 1 && e.pid !== before[1]);
  await app.atRest();
  const stats = await app.stats();
  const { values, types } = parse((await fetchText(metricsPort, '/metrics')).body);
  expect(stats.slots[1].restarts).toBe(1);
  expect(stats.slots[0].accepted + stats.slots[1].accepted).toBe(40);
  for (const [i, s] of stats.slots.entries()) {
    const at = (name) => values[`sticky_rs_${name}{slot="${i}"}`];
    expect({
      accepted: at('connections_accepted_total'),
      delivered: at('connections_delivered_total'),
      redelivered: at('connections_redelivered_total'),
      queued: at('connections_queued'),
      inFlight: at('connections_in_flight'),
      restarts: at('worker_restarts_total'),
      ready: at('slot_ready'),
      full: values[`sticky_rs_connections_dropped_total{slot="${i}",reason="queue_full"}`],
      timeout: values[`sticky_rs_connections_dropped_total{slot="${i}",reason="queue_timeout"}`],
    }).toEqual({
      accepted: s.accepted,
      delivered: s.delivered,
      redelivered: s.redelivered,
      queued: s.queued,
      inFlight: s.inFlight,
      restarts: s.restarts,
      ready: s.ready ? 1 : 0,
      full: s.dropped - s.expired,
      timeout: s.expired,
    });
  }
  expect({
    acceptErrors: values.sticky_rs_accept_errors_total,
    listenerFailures: values.sticky_rs_listeners_failed_total,
    rejected: values.sticky_rs_proxy_rejected_total,
    fallbacks: values.sticky_rs_proxy_fallbacks_total,
    givenUp: values.sticky_rs_proxy_given_up_total,
    resolving: values.sticky_rs_proxy_resolving,
  }).toEqual({
    acceptErrors: stats.acceptErrors,
    listenerFailures: stats.listenerFailures,
    rejected: stats.rejected,
    fallbacks: stats.fallbacks,
    givenUp: stats.givenUp,
    resolving: stats.resolving,
  });
  expect(types).toMatchObject({
    sticky_rs_connections_accepted_total: 'counter',
    sticky_rs_connections_queued: 'gauge',
    sticky_rs_slot_ready: 'gauge',
  });
  // promtool (shipped with Prometheus) finds the exposition valid.
  if (prometheusBin) {
    const check = spawnSync('promtool', ['check', 'metrics'], { input: (await fetchText(metricsPort, '/metrics')).body, encoding: 'utf8' });
    expect({ status: check.status, out: check.stdout + check.stderr }).toEqual({ status: 0, out: '' });
  }
});

const prometheusMissing = prometheusBin ? null : 'prometheus was not found in PATH (Debian: apt-get install prometheus)';
if (prometheusMissing && !IN_CI) {
  console.warn(`metrics.test.js: the real Prometheus test is SKIPPED: ${prometheusMissing}`);
  test.skip(`a real Prometheus server scrapes the example (skipped: ${prometheusMissing})`, () => {});
} else {
  test("a real Prometheus server scrapes the example's METRICS_PORT: per-slot counts are the djb2 slots of the clients", async () => {
    if (prometheusMissing) throw new Error(`${prometheusMissing} (required in CI)`);
    const [port, metricsPort, promPort] = [await freePort(), await freePort(), await freePort()];
    await startReadyExample({ PORT: String(port), WORKERS: '2', METRICS_PORT: String(metricsPort) });
    promDir = fs.mkdtempSync(path.join(os.tmpdir(), 'sticky-rs-prom-'));
    const dir = promDir;
    fs.writeFileSync(
      path.join(dir, 'prometheus.yml'),
      [
        'global:',
        '  scrape_interval: 1s',
        'scrape_configs:',
        '  - job_name: sticky-rs-example',
        '    static_configs:',
        `      - targets: ['127.0.0.1:${metricsPort}']`,
        '',
      ].join('\n'),
    );
    prometheus = spawn(
      prometheusBin,
      [
        `--config.file=${path.join(dir, 'prometheus.yml')}`,
        `--storage.tsdb.path=${path.join(dir, 'data')}`,
        `--web.listen-address=127.0.0.1:${promPort}`,
      ],
      { stdio: 'ignore', detached: true },
    );
    const clients = Array.from({ length: 30 }, (_, i) => clientIp(i));
    for (const ip of clients) expect((await get(port, ip, '/health')).status).toBe(200);
    const expected = [0, 1].map((slot) => clients.filter((ip) => stringHash(`::ffff:${ip}`) % 2 === slot).length);
    // Prometheus scrapes every second; query until it has the counts (or 30 s passed).
    const query = async () => {
      const r = await fetchText(promPort, `/api/v1/query?query=${encodeURIComponent('sticky_rs_connections_accepted_total')}`);
      const { data } = JSON.parse(r.body);
      const bySlot = [0, 0];
      for (const { metric, value } of data.result) bySlot[Number(metric.slot)] = Number(value[1]);
      return bySlot;
    };
    const started = Date.now();
    let seen = null;
    while (Date.now() - started < 30000) {
      seen = await query().catch(() => null);
      if (seen && seen[0] + seen[1] === clients.length) break;
      await sleep(250);
    }
    console.log(
      `Prometheus ${spawnSync(prometheusBin, ['--version'], { encoding: 'utf8' }).stdout.split('\n')[0]}: accepted per slot ${JSON.stringify(seen)} after ${Date.now() - started} ms; expected ${JSON.stringify(expected)}`,
    );
    expect(seen).toEqual(expected);
    const up = JSON.parse((await fetchText(promPort, `/api/v1/query?query=${encodeURIComponent('up{job="sticky-rs-example"}')}`)).body);
    expect(up.data.result.map((r) => r.value[1])).toEqual(['1']);
  });
}
