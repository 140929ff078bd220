'use strict';
// HTTPS on sticky-rs: the primary routes raw TCP connections, each worker terminates TLS itself
// with the https.Server it handed over. The fixture is tls-app.js (2 workers); the certificate
// is a fresh self-signed one, trusted by the clients through `ca` (verification stays on).
const { execFileSync } = require('node:child_process');
const crypto = require('node:crypto');
const fs = require('node:fs');
const https = require('node:https');
const os = require('node:os');
const path = require('node:path');
const stringHash = require('string-hash');
const { io } = require('socket.io-client');
const { freePort, clientIp, startFixture, stopAll, pool, clientSet, total } = require('./helpers');

const WORKERS = 2;
const TEST_TIMEOUT = 60000;
const STEP_TIMEOUT = 10000;

let dir;
let keyPath;
let certPath;
let cert;
let fingerprint;

beforeAll(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'sticky-rs-tls-'));
  keyPath = path.join(dir, 'key.pem');
  certPath = path.join(dir, 'cert.pem');
  execFileSync(
    'openssl',
    [
      'req',
      '-x509',
      '-newkey',
      'rsa:2048',
      '-nodes',
      '-keyout',
      keyPath,
      '-out',
      certPath,
      '-days',
      '1',
      '-subj',
      '/CN=localhost',
      '-addext',
      'subjectAltName=IP:127.0.0.1,DNS:localhost',
    ],
    { stdio: ['ignore', 'ignore', 'pipe'], timeout: 30000 },
  );
  cert = fs.readFileSync(certPath);
  fingerprint = new crypto.X509Certificate(cert).fingerprint256;
}, TEST_TIMEOUT);

afterAll(() => {
  if (dir) fs.rmSync(dir, { recursive: true, force: true });
});

// Client sockets and agents; closed after each test, even a failed one.
const { track, closeAll } = clientSet();

afterEach(async () => {
  closeAll();
  await stopAll();
});

async function start(env = {}) {
  const port = await freePort();
  const fixture = startFixture('tls-app.js', {
    PORT: String(port),
    WORKERS: String(WORKERS),
    TLS_KEY: keyPath,
    TLS_CERT: certPath,
    ...env,
  });
  await fixture.next((e) => e.event === 'listening');
  await fixture.count('ready', WORKERS);
  const pidOfSlot = {};
  for (const e of fixture.events) if (e.event === 'ready') pidOfSlot[e.slot] = e.pid;
  return { fixture, port, pidOfSlot };
}

/**
 * One HTTPS GET on a new connection (so a new TLS handshake) from `ip`; resolves with the body
 * and what the client saw of the TLS session.
 */
function httpsGet(port, ip, urlPath, options = {}) {
  return new Promise((resolve, reject) => {
    const req = https.get({ host: '127.0.0.1', port, path: urlPath, localAddress: ip, agent: false, ca: cert, ...options }, (res) => {
      const peer = res.socket.getPeerCertificate();
      const seen = {
        authorized: res.socket.authorized,
        protocol: res.socket.getProtocol(),
        fingerprint: peer?.fingerprint256,
      };
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (c) => (body += c));
      res.on('end', () => {
        try {
          resolve({ status: res.statusCode, body: JSON.parse(body), client: seen });
        } catch {
          reject(new Error(`GET ${urlPath} from ${ip}: not JSON: ${body}`));
        }
      });
    });
    req.setTimeout(STEP_TIMEOUT, () => req.destroy(new Error(`GET ${urlPath} from ${ip}: no answer in ${STEP_TIMEOUT} ms`)));
    req.on('error', reject);
  });
}

describe('HTTPS with TLS terminated in the workers', () => {
  test(
    '24 client addresses x 3 HTTPS requests, each on a new TLS connection: verified, sticky, decrypted in the worker',
    async () => {
      const IPS = 24;
      const REQUESTS = 3;
      const { fixture, port, pidOfSlot } = await start();
      const ips = Array.from({ length: IPS }, (_, i) => clientIp(i));
      const results = await pool(ips, 6, async (ip) => {
        const answers = [];
        for (let k = 0; k < REQUESTS; k++) answers.push(await httpsGet(port, ip, `/req/${k}`));
        return { ip, answers };
      });

      const workerPids = Object.values(pidOfSlot);
      const perPid = {};
      for (const { ip, answers } of results) {
        for (const [k, { status, body, client }] of answers.entries()) {
          // The client verified the server's certificate (rejectUnauthorized is on) and it is ours.
          expect({ ip, k, status, ...client }).toEqual({
            ip,
            k,
            status: 200,
            authorized: true,
            protocol: expect.stringMatching(/^TLSv1\.[23]$/),
            fingerprint,
          });
          // The worker, not the primary, decrypted the request: its socket is a TLS socket.
          expect({
            ip,
            k,
            url: body.url,
            encrypted: body.encrypted,
            protocol: body.protocol,
            address: body.remoteAddress.replace(/^::ffff:/, ''),
          }).toEqual({ ip, k, url: `/req/${k}`, encrypted: true, protocol: client.protocol, address: ip });
          expect(workerPids).toContain(body.pid);
        }
        // Same address, same worker, every time; the one djb2(address) % workers names.
        const pids = [...new Set(answers.map((a) => a.body.pid))];
        expect({ ip, pids }).toEqual({ ip, pids: [answers[0].body.pid] });
        const { slot, remoteAddress } = answers[0].body;
        expect({ ip, slot, pid: pids[0] }).toEqual({ ip, slot: stringHash(remoteAddress) % WORKERS, pid: pidOfSlot[slot] });
        perPid[pids[0]] = (perPid[pids[0]] || 0) + 1;
      }
      // Both workers terminated TLS for some clients.
      expect(Object.keys(perPid).map(Number).sort()).toEqual(workerPids.sort());

      // With kernel dispatch the workers report what they accepted every 100 ms at most.
      const stats = await fixture.statsWhen((st) => total(st, 'accepted') >= IPS * REQUESTS);
      expect(stats.acceptErrors).toBe(0);
      for (const s of stats.slots) {
        expect(s.dropped).toBe(0);
        expect(s.redelivered).toBe(0);
      }
      expect(total(stats, 'accepted')).toBeGreaterThanOrEqual(IPS * REQUESTS);
    },
    TEST_TIMEOUT,
  );

  test(
    'a client that does not trust the certificate is refused by its own verification',
    async () => {
      const { port } = await start();
      await expect(httpsGet(port, clientIp(300), '/', { ca: undefined })).rejects.toMatchObject({
        code: expect.stringMatching(/^(DEPTH_ZERO_SELF_SIGNED_CERT|SELF_SIGNED_CERT_IN_CHAIN|UNABLE_TO_VERIFY_LEAF_SIGNATURE)$/),
      });
      // The worker is fine afterwards.
      const ok = await httpsGet(port, clientIp(300), '/after');
      expect(ok.body).toMatchObject({ url: '/after', encrypted: true });
    },
    TEST_TIMEOUT,
  );

  async function socketioOverHttps(transports) {
    const { port, pidOfSlot } = await start();
    const ip = clientIp(400);
    // The worker this address goes to, as plain HTTPS requests see it.
    const { body: seen } = await httpsGet(port, ip, '/whoami');
    expect(Object.values(pidOfSlot)).toContain(seen.pid);

    const agent = track(new https.Agent({ ca: cert, localAddress: ip }));
    const socket = track(
      io(`https://127.0.0.1:${port}`, {
        forceNew: true,
        reconnection: false,
        timeout: STEP_TIMEOUT,
        agent,
        ...(transports ? { transports } : {}),
      }),
    );
    const errors = [];
    socket.on('connect_error', (err) =>
      errors.push(`connect_error: ${err.message} ${err.description?.message ? err.description.message : ''}`),
    );
    socket.on('disconnect', (reason) => errors.push(`disconnect: ${reason}`));
    const engine = socket.io.engine;
    engine.on('upgradeError', (err) => errors.push(`upgradeError: ${err.message}`));
    const upgraded = new Promise((resolve) => engine.once('upgrade', (t) => resolve(t.name)));
    await new Promise((resolve) => {
      const timer = setTimeout(resolve, STEP_TIMEOUT);
      socket.once('connect', () => {
        clearTimeout(timer);
        resolve();
      });
      socket.once('connect_error', () => {
        clearTimeout(timer);
        resolve();
      });
    });
    expect({ connected: socket.connected, errors }).toEqual({ connected: true, errors: [] });
    return { socket, engine, upgraded, errors, seen, ip };
  }

  function expectAck(answer, { seen, ip }, k, transport) {
    expect(answer).toEqual({
      pid: seen.pid,
      slot: seen.slot,
      address: seen.remoteAddress,
      secure: true,
      transport,
      encrypted: true,
      protocol: expect.stringMatching(/^TLSv1\.[23]$/),
      cipher: expect.any(String),
      servername: null,
      remotePort: expect.any(Number),
      payload: { ip, k },
    });
  }

  test(
    'socket.io-client over HTTPS with polling: handshake and acks on the worker that serves its address',
    async () => {
      const c = await socketioOverHttps(['polling']);
      for (let k = 0; k < 3; k++) {
        const answer = await c.socket.timeout(STEP_TIMEOUT).emitWithAck('echo', { ip: c.ip, k });
        expectAck(answer, c, k, 'polling');
      }
      expect(c.engine.transport.name).toBe('polling');
      expect(c.errors).toEqual([]);
    },
    TEST_TIMEOUT,
  );

  test(
    'socket.io-client over HTTPS upgrades to a secure websocket on the same worker',
    async () => {
      const c = await socketioOverHttps(undefined);
      if (c.engine.transport.name !== 'websocket') {
        const name = await Promise.race([
          c.upgraded,
          new Promise((resolve) => setTimeout(() => resolve('no upgrade in time'), STEP_TIMEOUT).unref()),
        ]);
        expect(name).toBe('websocket');
      }
      for (let k = 0; k < 3; k++) {
        const answer = await c.socket.timeout(STEP_TIMEOUT).emitWithAck('echo', { ip: c.ip, k });
        expectAck(answer, c, k, 'websocket');
      }
      expect(c.errors).toEqual([]);
    },
    TEST_TIMEOUT,
  );
});

describe("HTTPS with routeBy 'sid'", () => {
  // The TLS handshake hides the request line: such connections route by the client's address
  // among the ready workers (README, Socket.IO sessions), so they still stick.
  test(
    '12 client addresses x 3 HTTPS requests on new TLS connections: each address keeps its worker, both workers serve',
    async () => {
      const { port, pidOfSlot } = await start({ ROUTE_BY: 'sid' });
      const ips = Array.from({ length: 12 }, (_, i) => clientIp(i));
      const perIp = await pool(ips, 6, async (ip) => {
        const pids = new Set();
        for (let k = 0; k < 3; k++) {
          const { status, body } = await httpsGet(port, ip, `/req/${k}`);
          expect(status).toBe(200);
          pids.add(body.pid);
        }
        return [...pids];
      });
      for (const pids of perIp) expect(pids).toHaveLength(1);
      expect(new Set(perIp.flat())).toEqual(new Set(Object.values(pidOfSlot)));
    },
    TEST_TIMEOUT,
  );
});
