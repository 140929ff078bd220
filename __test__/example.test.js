'use strict';
// The example chat (example/server.js, Express 5 + Socket.IO + @socket.io/cluster-adapter) on 4
// workers: clients from many addresses, half of them long-polling only, all in one room; every
// message must reach every member exactly once and in order, whichever worker each is on.
// Also: Ctrl-C (SIGINT to the process group) stops it cleanly.
const { freePort, clientIp, pool, get } = require('./helpers');
const { startReadyExample, connectClient, upgraded, stopAllExamples, within } = require('./fixtures/example-harness');

const WORKERS = 4;
const CLIENTS = 64; // >= 50, from 64 distinct addresses
const MESSAGES = 3; // per client, then one 'end' marker
const ROOM = 'everyone';

afterEach(async () => {
  await stopAllExamples();
});

test(`${CLIENTS} clients (half long-polling) on ${WORKERS} workers: every message reaches every member exactly once, in order`, async () => {
  const port = await freePort();
  const { url } = await startReadyExample({ PORT: String(port), WORKERS: String(WORKERS) });
  const started = Date.now();

  // Connect (16 at a time), join the room, and learn each client's worker and transport.
  const clients = await pool(
    Array.from({ length: CLIENTS }, (_, i) => i),
    16,
    async (i) => {
      const client = connectClient(url, clientIp(i), { polling: i % 2 === 0, name: `c${i}` });
      await client.connected;
      const joined = await client.ask('join', { name: client.name, room: ROOM });
      expect(joined).toMatchObject({ ok: true, name: client.name, room: ROOM });
      if (!client.polling) await upgraded(client);
      client.whoami = await client.ask('whoami');
      // Stickiness: a plain HTTP request from the same address reaches the same worker.
      client.health = (await get(port, client.ip, '/health')).body;
      return client;
    },
  );

  // Spread over all workers, each with the transport it asked for.
  const perSlot = {};
  for (const c of clients) {
    const key = `slot ${c.whoami.slot} (pid ${c.whoami.pid})`;
    perSlot[key] ??= { polling: 0, websocket: 0 };
    perSlot[key][c.whoami.transport] += 1;
    expect(c.whoami.transport).toBe(c.polling ? 'polling' : 'websocket');
  }
  expect(new Set(clients.map((c) => c.whoami.slot)).size).toBe(WORKERS);
  expect(new Set(clients.map((c) => c.whoami.pid)).size).toBe(WORKERS);
  for (const c of clients) expect(c.health).toEqual({ pid: c.whoami.pid, slot: c.whoami.slot, address: c.whoami.address });

  // Every client sends its messages one after the other, each after the previous one's ack;
  // all clients at once. The 'end' marker comes last: once every member has every sender's
  // marker, a duplicate of an earlier message (same sender, same path) would have arrived.
  const texts = [...Array.from({ length: MESSAGES }, (_, k) => `m${k + 1}`), 'end'];
  await Promise.all(
    clients.map(async (c) => {
      for (const text of texts) {
        const ack = await c.ask('chat', { text });
        expect(ack).toMatchObject({ ok: true });
      }
    }),
  );
  const ends = (c) => c.chats.filter((m) => m.text === 'end').length;
  await Promise.all(clients.map((c) => c.until((x) => ends(x) >= CLIENTS, 30000, `all ${CLIENTS} end markers`)));

  // What each member got from each sender: exactly m1, m2, m3, end, in that order.
  const expected = {};
  for (const s of clients) expected[s.name] = texts;
  let deliveries = 0;
  for (const c of clients) {
    const got = {};
    for (const m of c.chats) {
      expect(m.room).toBe(ROOM);
      got[m.from] = got[m.from] || [];
      got[m.from].push(m.text);
      deliveries += 1;
    }
    expect(got).toEqual(expected);
    // Messages came from senders on every worker (the sender's worker relays the broadcast).
    expect(new Set(c.chats.map((m) => m.worker.slot)).size).toBe(WORKERS);
    expect(c.errors).toEqual([]);
    expect(c.disconnects).toEqual([]);
  }
  expect(deliveries).toBe(CLIENTS * CLIENTS * texts.length);

  console.log(
    `example chat: ${CLIENTS} clients (${CLIENTS / 2} polling, ${CLIENTS / 2} websocket) on ${WORKERS} workers ` +
      `${JSON.stringify(perSlot)}; ${CLIENTS * texts.length} messages sent (${MESSAGES} + end marker each), ` +
      `${deliveries} deliveries (= ${CLIENTS}^2 x ${texts.length}), all exactly once and in order; ` +
      `${Date.now() - started} ms after the app was ready`,
  );
}, 90000);

test('SIGINT to the process group (Ctrl-C) with clients connected: exits 0, no stack trace', async () => {
  const port = await freePort();
  const { app, url } = await startReadyExample({ PORT: String(port), WORKERS: String(WORKERS) });
  // Open sessions of both kinds, in a room, so the shutdown has something to close.
  const clients = await Promise.all(
    [0, 1, 2, 3].map(async (i) => {
      const c = connectClient(url, clientIp(100 + i), { polling: i % 2 === 0, name: `s${i}` });
      await c.connected;
      await c.ask('join', { name: c.name, room: ROOM });
      return c;
    }),
  );
  const disconnected = Promise.all(clients.map((c) => (c.socket.connected ? new Promise((r) => c.socket.once('disconnect', r)) : null)));

  const sent = Date.now();
  process.kill(-app.child.pid, 'SIGINT');
  // hardShutdownDelay is 10 s in the example: 15 s bounds this even if it had to kill workers.
  const exit = await within(app.exited, 15000, () => `exit after SIGINT\n${app.describe()}`);
  const took = Date.now() - sent;
  expect({ exit, stderr: app.stderr }).toEqual({ exit: { code: 0, signal: null }, stderr: '' });
  expect(app.lines).toContain('Shutting down: waiting for open connections to close...');
  expect(app.lines.join('\n')).not.toMatch(/\n\s+at /);
  // The server closed the clients' sessions (none is left hanging).
  await within(disconnected, 5000, 'clients disconnected');
  console.log(
    `example chat: SIGINT to the process group, exit code ${exit.code} after ${took} ms, stderr empty; client disconnect reasons: ${clients.map((c) => c.disconnects.join(',')).join(' | ')}`,
  );
}, 45000);
