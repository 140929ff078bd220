'use strict';
// The example chat on two "machines" (two primaries, 2 workers each) sharing rooms through a real
// redis-server (REDIS_URL), once with each adapter the example offers (REDIS_ADAPTER):
// @socket.io/redis-streams-adapter and @socket.io/redis-adapter's sharded Pub/Sub (Redis >= 7).
// Broadcasts among 40 clients (each exactly once, latency measured); then Redis is stopped and
// started again, empty: the apps must recover by themselves, and the test measures what happens
// to messages sent during the outage (documented in docs/EXAMPLE.md and the README).
const { spawn, spawnSync } = require('node:child_process');
const { performance } = require('node:perf_hooks');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const readline = require('node:readline');
const stringHash = require('string-hash');
const { freePort, clientIp } = require('./helpers');
const { startReadyExample, connectClient, upgraded, stopAllExamples, waitUntil, within } = require('./fixtures/example-harness');

const WORKERS = 2;
const ROOM = 'machines';
const OUTAGE_MESSAGES = 5; // per client, sent while Redis is down
const AFTER_MESSAGES = 20; // per client, once the adapters work again
const BROADCAST_PER_SLOT = 10; // clients per worker in the broadcast test (x 2 workers x 2 machines)
const BROADCAST_ROUNDS = 2; // messages per client in the broadcast test, one at a time
const BURST_MESSAGES = 5; // per client, all clients at once
const IN_CI = process.env.CI === 'true';

const redisVersion = (() => {
  const r = spawnSync('redis-server', ['--version'], { encoding: 'utf8' });
  return r.status === 0 ? (/v=(\d+)\.(\d+)/.exec(r.stdout) || []).slice(1).map(Number) : null;
})();
const redisPath = redisVersion ? 'redis-server' : null;
// Sharded Pub/Sub (SSUBSCRIBE, SPUBLISH) exists from Redis 7.0 on.
const hasShardedPubSub = redisVersion !== null && redisVersion[0] >= 7;
const ADAPTERS = [
  { name: 'streams', banner: '@socket.io/redis-streams-adapter' },
  { name: 'sharded', banner: '@socket.io/redis-adapter (sharded Pub/Sub)' },
];

/** A redis-server on 127.0.0.1:`port`, no persistence, `dir` as its working directory. */
function startRedis(port, dir) {
  // A test that timed out keeps running: it must not start a server after the clean-up ran.
  if (cleanedUp) throw new Error('not starting redis-server: the suite already cleaned up');
  const child = spawn(redisPath, ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--dir', dir], {
    stdio: ['ignore', 'pipe', 'pipe'],
    detached: true,
  });
  const redis = { child, output: '', exitInfo: null };
  const exited = new Promise((resolve) =>
    child.once('exit', (code, signal) => {
      redis.exitInfo = { code, signal };
      resolve(redis.exitInfo);
    }),
  );
  redis.exited = exited;
  redis.ready = new Promise((resolve, reject) => {
    readline.createInterface({ input: child.stdout }).on('line', (line) => {
      redis.output += `${line}\n`;
      if (/Ready to accept connections/.test(line)) resolve();
    });
    child.stderr.on('data', (d) => (redis.output += d));
    exited.then((e) => reject(new Error(`redis-server exited (${JSON.stringify(e)}) before it was ready:\n${redis.output}`)));
  });
  redis.stop = (signal = 'SIGKILL') => {
    if (!redis.exitInfo) {
      try {
        process.kill(-child.pid, signal);
      } catch {}
    }
    return exited;
  };
  redises.add(redis);
  return redis;
}
const redises = new Set();
const tempDirs = [];
let cleanedUp = false;

async function stopEverything() {
  await stopAllExamples();
  await Promise.all([...redises].map((r) => r.stop()));
  redises.clear();
  for (const dir of tempDirs.splice(0)) fs.rmSync(dir, { recursive: true, force: true });
}
afterEach(stopEverything, 20000);
afterAll(async () => {
  cleanedUp = true;
  await stopEverything();
}, 20000);

/** The worker slot sticky-rs gives `ip` on the example's default dual-stack listener. */
const slotOf = (ip) => stringHash(`::ffff:${ip}`) % WORKERS;

/** `perSlot` client addresses for each slot, from address index `from` on: [[ip, ...] per slot]. */
function addressesForEachSlot(from, perSlot = 1) {
  const bySlot = Array.from({ length: WORKERS }, () => []);
  for (let i = from; bySlot.some((ips) => ips.length < perSlot); i++) {
    const ips = bySlot[slotOf(clientIp(i))];
    if (ips.length < perSlot) ips.push(clientIp(i));
  }
  return bySlot;
}

/** A redis-server on a free port with its own temporary directory, ready. */
async function readyRedis() {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'sticky-rs-redis-'));
  tempDirs.push(dir);
  const port = await freePort();
  const redis = startRedis(port, dir);
  await within(redis.ready, 10000, 'redis-server ready');
  return { redis, port, dir, url: `redis://127.0.0.1:${port}` };
}

/** Two "machines": each its own example primary with WORKERS workers, the same Redis and adapter. */
async function startMachines(adapter, REDIS_URL) {
  const machines = [];
  for (const name of ['A', 'B']) {
    const port = await freePort();
    const { app, url } = await startReadyExample({ PORT: String(port), WORKERS: String(WORKERS), REDIS_URL, REDIS_ADAPTER: adapter.name });
    expect(app.lines.join('\n')).toContain(`Socket.IO adapter: ${adapter.banner} (Redis`);
    machines.push({ name, app, url });
  }
  return machines;
}

/**
 * `perSlot` clients on each worker of each machine, alternately long-polling and websocket,
 * all in ROOM, each checked to be on the worker its address is for. Every client records when
 * (performance.now()) each chat text reached it, in `arrivals`.
 */
async function joinMembers(machines, perSlot) {
  const clients = [];
  for (const [m, machine] of machines.entries()) {
    for (const [slot, ips] of addressesForEachSlot(m * 500, perSlot).entries()) {
      await Promise.all(
        ips.map(async (ip, k) => {
          const polling = (slot + k) % 2 === 0;
          const c = connectClient(machine.url, ip, { polling, name: `${machine.name}${slot}${perSlot > 1 ? `.${k}` : ''}` });
          c.arrivals = new Map();
          c.listeners.add((msg) => c.arrivals.set(msg.text, performance.now()));
          await c.connected;
          expect(await c.ask('join', { name: c.name, room: ROOM })).toMatchObject({ ok: true });
          if (!c.polling) await upgraded(c);
          c.whoami = await c.ask('whoami');
          expect(c.whoami.slot).toBe(slot);
          c.machine = machine.name;
          c.sent = [];
          c.sentAt = new Map();
          clients.push(c);
        }),
      );
    }
  }
  return clients;
}

/** Sends a chat message (recording what and when) and expects the server's acknowledgement. */
async function send(c, text) {
  c.sent.push(text);
  c.sentAt.set(text, performance.now());
  expect(await c.ask('chat', { text })).toMatchObject({ ok: true });
}
const texts = (receiver, sender) => receiver.chats.filter((m) => m.from === sender.name).map((m) => m.text);
const has = (text) => (c) => c.chats.some((m) => m.text === text);
const quantile = (sorted, q) => sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))];
const ms = (x) => `${x.toFixed(1)} ms`;

/** Every client got exactly what each sender sent, once, in order, and had no error. */
function expectExactlyOnce(clients) {
  for (const r of clients)
    for (const s of clients) expect({ to: r.name, from: s.name, got: texts(r, s) }).toEqual({ to: r.name, from: s.name, got: s.sent });
  for (const c of clients)
    expect({ name: c.name, errors: c.errors, disconnects: c.disconnects }).toEqual({ name: c.name, errors: [], disconnects: [] });
}

function expectMachinesHealthy(machines) {
  for (const m of machines) expect(m.app.lines.concat(m.app.stderr.split('\n')).join('\n')).not.toMatch(/\n\s+at /);
  expect(machines.map((m) => m.app.exitInfo)).toEqual([null, null]);
}

if (!redisPath && IN_CI) {
  test('redis-server is installed (required in CI)', () => {
    throw new Error('redis-server was not found in PATH; CI must install it (Debian/Ubuntu: apt-get install redis-server)');
  });
} else if (!redisPath) {
  console.warn('redis.test.js SKIPPED: redis-server was not found in PATH (install it, e.g. apt-get install redis-server, to run it)');
  test.skip('two machines sharing rooms through Redis (skipped: redis-server not found in PATH)', () => {});
} else {
  describe.each(ADAPTERS)('$name adapter', (adapter) => {
    if (adapter.name === 'sharded' && !hasShardedPubSub) {
      const why = `redis-server ${redisVersion.join('.')} has no sharded Pub/Sub (Redis >= 7.0)`;
      if (IN_CI) test('redis-server >= 7.0 (required in CI for the sharded Pub/Sub adapter)', () => expect(why).toBe(''));
      else {
        console.warn(`redis.test.js: sharded adapter SKIPPED: ${why}`);
        test.skip(`sharded Pub/Sub (skipped: ${why})`, () => {});
      }
      return;
    }

    test(`${WORKERS * 2 * BROADCAST_PER_SLOT} clients on two machines: every broadcast reaches every client exactly once`, async () => {
      const { url } = await readyRedis();
      const machines = await startMachines(adapter, url);
      const clients = await joinMembers(machines, BROADCAST_PER_SLOT);

      // One message at a time, each from a different client, until all clients have it: the
      // latency from the send to each client, and to the last of them.
      const toEach = [];
      const toAll = [];
      for (let round = 1; round <= BROADCAST_ROUNDS; round++) {
        for (const c of clients) {
          const text = `${c.name} one ${round}`;
          await send(c, text);
          await Promise.all(clients.map((r) => r.until(has(text), 10000, `"${text}"`)));
          const latencies = clients.map((r) => r.arrivals.get(text) - c.sentAt.get(text));
          toEach.push(...latencies);
          toAll.push(Math.max(...latencies));
        }
      }
      // Then a burst: every client sends BURST_MESSAGES at once.
      const burstStart = performance.now();
      await Promise.all(
        clients.map(async (c) => {
          for (let k = 1; k <= BURST_MESSAGES; k++) await send(c, `${c.name} burst ${k}`);
        }),
      );
      const lastOfEach = clients.map((s) => has(`${s.name} burst ${BURST_MESSAGES}`));
      await Promise.all(clients.map((r) => r.until((x) => lastOfEach.every((p) => p(x)), 20000, 'the last burst message of every client')));
      const burstMs = performance.now() - burstStart;

      expectExactlyOnce(clients);
      expectMachinesHealthy(machines);

      toEach.sort((x, y) => x - y);
      toAll.sort((x, y) => x - y);
      const messages = clients.length * (BROADCAST_ROUNDS + BURST_MESSAGES);
      console.log(
        `redis broadcast, ${adapter.name} adapter: 2 primaries x ${WORKERS} workers, ${clients.length} clients (half long-polling, half websocket). ` +
          `${messages} messages x ${clients.length} clients = ${messages * clients.length} deliveries, each exactly once, in order per sender. ` +
          `One at a time (${toAll.length} messages): send to a client median ${ms(quantile(toEach, 0.5))}, p95 ${ms(quantile(toEach, 0.95))}; ` +
          `to all ${clients.length} median ${ms(quantile(toAll, 0.5))}, p95 ${ms(quantile(toAll, 0.95))}, max ${ms(toAll[toAll.length - 1])}. ` +
          `Burst of ${clients.length * BURST_MESSAGES} (${BURST_MESSAGES} per client at once): all delivered in ${ms(burstMs)}.`,
      );
    }, 120000);

    test('Redis restarts empty: the apps recover by themselves; what happens to messages sent during the outage', async () => {
      const { redis: first, port: redisPort, dir, url: REDIS_URL } = await readyRedis();
      let redis = first;
      const machines = await startMachines(adapter, REDIS_URL);

      // A client on each worker of each machine (one polling, one websocket each), in one room.
      const clients = await joinMembers(machines, 1);

      // Messages cross in both directions, reaching every member of both machines.
      for (const c of clients) {
        await send(c, `${c.name} before`);
        await Promise.all(clients.map((r) => r.until(has(`${c.name} before`), 10000, `"${c.name} before"`)));
      }

      // Outage: SIGTERM, and wait until every Redis connection of every worker saw it go (the
      // sharded adapter has two per worker: one publishes, one subscribes).
      await redis.stop('SIGTERM');
      expect(redis.exitInfo).toEqual({ code: 0, signal: null });
      const connections = adapter.name === 'sharded' ? 2 : 1;
      await Promise.all(machines.map((m) => m.app.waitForStderr(/Redis (subscriber )?unavailable/, WORKERS * connections, 10000)));
      const downAt = Date.now();
      for (const c of clients) for (let k = 1; k <= OUTAGE_MESSAGES; k++) await send(c, `${c.name} outage ${k}`);
      const outageAcksMs = Date.now() - downAt;
      // The scenario: Redis stays down for 2 s, then a new, empty one starts on the same port.
      await new Promise((r) => setTimeout(r, 2000));
      const isOutage = (text) => text.includes(' outage ');
      const deliveredDuringOutage = clients.reduce((n, c) => n + c.chats.filter((m) => isOutage(m.text)).length, 0);
      redis = startRedis(redisPort, dir);
      await within(redis.ready, 10000, 'redis-server ready again');
      const restartedAt = Date.now();

      // Poll until every path works again: each client sends probes (every 500 ms at most,
      // for at most 30 s) until one of them reaches every client, itself included.
      let probesSent = 0;
      await Promise.all(
        clients.map((from) => {
          let k = 0;
          return waitUntil(
            async () => {
              const text = `${from.name} probe ${++k}`;
              probesSent++;
              await send(from, text);
              return within(Promise.all(clients.map((to) => to.until(has(text), 500, text))), 1000, text).then(
                () => true,
                () => false,
              );
            },
            30000,
            `a probe of ${from.name} to every client after the restart`,
            0,
          );
        }),
      );
      const recoveredMs = Date.now() - restartedAt;

      // After the restart: AFTER_MESSAGES from each client, then an end marker.
      await Promise.all(
        clients.map(async (c) => {
          for (let k = 1; k <= AFTER_MESSAGES; k++) await send(c, `${c.name} after ${k}`);
          await send(c, `${c.name} end`);
        }),
      );
      await Promise.all(clients.map((r) => r.until((x) => clients.every((s) => has(`${s.name} end`)(x)), 20000, 'every end marker')));

      const outageSent = clients.length * OUTAGE_MESSAGES;
      const got = (r, s, phase) => texts(r, s).filter((t) => t.includes(` ${phase}`));
      const outageDeliveries = clients.reduce((n, r) => n + clients.reduce((m, s) => m + got(r, s, 'outage').length, 0), 0);
      // To the sender's own worker (here: the sender itself) and to the three other workers.
      const outageToSelf = clients.reduce((n, c) => n + got(c, c, 'outage').length, 0);
      const outageToOthers = outageDeliveries - outageToSelf;
      const probesDelivered = clients.reduce((n, r) => n + clients.reduce((m, s) => m + got(r, s, 'probe').length, 0), 0);
      // Nothing was delivered while Redis was down, not even to members on the sender's worker:
      // both adapters deliver locally only once Redis has the message (or refused it).
      expect(deliveredDuringOutage).toBe(0);
      if (adapter.name === 'streams') {
        // Every member got exactly what each sender sent, once, in order: the messages before
        // the outage, those sent during it (delayed), the probes, and those after.
        expectExactlyOnce(clients);
        expect(outageDeliveries).toBe(outageSent * clients.length);
      } else {
        // Pub/Sub keeps nothing: what each worker published before the other workers'
        // subscribers were back is lost for them. What arrives is each message at most once, in
        // order; everything before the outage and after the recovery, exactly once.
        for (const r of clients)
          for (const s of clients) {
            for (const phase of ['before', 'after', 'end'])
              expect({ to: r.name, from: s.name, phase, got: got(r, s, phase) }).toEqual({
                to: r.name,
                from: s.name,
                phase,
                got: s.sent.filter((t) => t.includes(` ${phase}`)),
              });
            for (const phase of ['outage', 'probe']) {
              const received = got(r, s, phase);
              expect({ to: r.name, from: s.name, phase, got: received }).toEqual({
                to: r.name,
                from: s.name,
                phase,
                got: s.sent.filter((t) => received.includes(t)),
              });
            }
          }
        for (const c of clients)
          expect({ name: c.name, errors: c.errors, disconnects: c.disconnects }).toEqual({ name: c.name, errors: [], disconnects: [] });
        // The sender's own worker always delivers its messages (once the publish is done or failed).
        expect(outageToSelf).toBe(outageSent);
      }
      expectMachinesHealthy(machines);

      console.log(
        `redis restart, ${adapter.name} adapter: 2 primaries x ${WORKERS} workers, ${clients.length} clients (${clients.map((c) => `${c.name}: slot ${c.whoami.slot} ${c.whoami.transport}`).join(', ')}). ` +
          `Outage: ${outageSent} messages sent while Redis was down (all acked by the server in ${outageAcksMs} ms), ` +
          `${deliveredDuringOutage} delivered during the outage; after Redis restarted (empty): ${outageDeliveries}/${outageSent * clients.length} deliveries ` +
          `(to the sender's own worker ${outageToSelf}/${outageSent}, to the other 3 workers ${outageToOthers}/${outageSent * (clients.length - 1)}; ` +
          `lost ${outageSent * clients.length - outageDeliveries}), each at most once, in order. ` +
          `Every path worked again ${recoveredMs} ms after the restart (${probesSent} probes, ${probesDelivered}/${probesSent * clients.length} deliveries). ` +
          `After: ${clients.length * (AFTER_MESSAGES + 1)} messages, all delivered exactly once to all ${clients.length} members, in order.`,
      );
    }, 120000);
  });
}
