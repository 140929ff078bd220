'use strict';
// Socket.IO long-polling sessions from many client addresses, one new TCP connection per HTTP
// request (as a browser behind different proxies/NATs would, and as sticky routing must survive).
// usage: node bench/socketio-sessions.js --port P [--ips 200] [--duration 3000] [--concurrency 32]
//        [--ip-base 127.0.3.1] [--timeout 5000] [--warmup 0] [--json]
// --warmup MS first runs unmeasured sessions for MS ms (from at most 32 of the addresses).
// A session: handshake (GET ?EIO=4&transport=polling), POST "40" (connect to /), poll until the
// connect ack, POST 42["msg",token], poll until 42["echo",token], then POST "1" (close, best
// effort). It succeeds if every step got the expected answer. Sessions start until --duration
// has passed; the ones in flight then are finished and counted. sessions/s = completed / wall time.
const net = require('node:net');

function parseArgs(argv) {
  const opts = { port: 0, ips: 200, duration: 3000, concurrency: 32, ipBase: '127.0.3.1', timeout: 5000, warmup: 0, json: false };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const next = () => argv[++i];
    if (a === '--port') opts.port = Number(next());
    else if (a === '--ips') opts.ips = Number(next());
    else if (a === '--duration') opts.duration = Number(next());
    else if (a === '--concurrency') opts.concurrency = Number(next());
    else if (a === '--ip-base') opts.ipBase = next();
    else if (a === '--timeout') opts.timeout = Number(next());
    else if (a === '--warmup') opts.warmup = Number(next());
    else if (a === '--json') opts.json = true;
    else throw new Error(`unknown argument ${a}`);
  }
  if (!opts.port) throw new Error('--port is required');
  return opts;
}

// Source addresses counted up from the base, skipping .0 and .255 in the last octet (like loadgen).
function addresses(base, count) {
  let n = base.split('.').reduce((acc, o) => acc * 256 + Number(o), 0);
  const out = [];
  while (out.length < count) {
    const last = n % 256;
    if (last !== 0 && last !== 255) out.push([n >>> 24, (n >>> 16) & 255, (n >>> 8) & 255, last].join('.'));
    n++;
  }
  return out;
}

class StepError extends Error {
  constructor(step, reason) {
    super(`${step}: ${reason}`);
    this.kind = `${step}: ${reason}`;
  }
}

function decodeChunked(buf) {
  const parts = [];
  let pos = 0;
  for (;;) {
    const eol = buf.indexOf('\r\n', pos);
    if (eol < 0) break;
    const size = parseInt(buf.subarray(pos, eol).toString('latin1'), 16);
    if (!size) break;
    parts.push(buf.subarray(eol + 2, eol + 2 + size));
    pos = eol + 2 + size + 2;
  }
  return Buffer.concat(parts);
}

// One HTTP/1.1 request on a new connection from `localAddress`; resolves { status, body }.
function request(port, localAddress, method, path, body, timeout, step) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    let done = false;
    const socket = net.connect({ host: '127.0.0.1', port, localAddress });
    const finish = (err, value) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      socket.destroy();
      if (err) reject(err);
      else resolve(value);
    };
    const timer = setTimeout(() => finish(new StepError(step, 'timeout')), timeout);
    socket.on('connect', () => {
      const payload = body === undefined ? '' : body;
      const head =
        `${method} ${path} HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nConnection: close\r\n` +
        (body === undefined ? '' : `Content-Type: text/plain;charset=UTF-8\r\nContent-Length: ${Buffer.byteLength(payload)}\r\n`) +
        '\r\n';
      socket.write(head + payload); // no half-close: browsers do not send FIN first
    });
    socket.on('data', (c) => chunks.push(c));
    socket.on('error', (err) => finish(new StepError(step, err.code || err.message)));
    socket.on('close', () => {
      const raw = Buffer.concat(chunks);
      const end = raw.indexOf('\r\n\r\n');
      if (end < 0) return finish(new StepError(step, raw.length ? 'bad response' : 'closed without response'));
      const head = raw.subarray(0, end).toString('latin1');
      const status = Number(head.split(' ')[1]);
      let rest = raw.subarray(end + 4);
      if (/\r\ntransfer-encoding:\s*chunked/i.test(head)) rest = decodeChunked(rest);
      else {
        const len = /\r\ncontent-length:\s*(\d+)/i.exec(head);
        if (len) rest = rest.subarray(0, Number(len[1]));
      }
      finish(null, { status, body: rest.toString('utf8') });
    });
  });
}

async function session(opts, localAddress, token) {
  const base = '/socket.io/?EIO=4&transport=polling';
  const call = async (step, method, path, body, check) => {
    const res = await request(opts.port, localAddress, method, path, body, opts.timeout, step);
    if (res.status !== 200) {
      let why = `HTTP ${res.status}`;
      try {
        why += ` ${JSON.parse(res.body).message}`;
      } catch {}
      throw new StepError(step, why);
    }
    if (check && !check(res.body)) throw new StepError(step, `unexpected body ${JSON.stringify(res.body.slice(0, 60))}`);
    return res.body;
  };
  const open = await call('handshake', 'GET', base, undefined, (b) => b.startsWith('0{'));
  const { sid } = JSON.parse(open.slice(1));
  const url = `${base}&sid=${encodeURIComponent(sid)}`;
  const pollUntil = async (step, want) => {
    for (let i = 0; i < 3; i++) {
      const body = await call(step, 'GET', url);
      if (body.split('\x1e').some(want)) return;
    }
    throw new StepError(step, 'expected packet not received');
  };
  await call('connect', 'POST', url, '40', (b) => b === 'ok');
  await pollUntil('poll connect ack', (p) => p.startsWith('40'));
  await call('message', 'POST', url, `42${JSON.stringify(['msg', token])}`, (b) => b === 'ok');
  await pollUntil('poll echo', (p) => p === `42${JSON.stringify(['echo', token])}`);
  await call('close', 'POST', url, '1').catch(() => {}); // best effort, not part of success
}

async function run(opts) {
  const ips = addresses(opts.ipBase, opts.ips);
  const failures = {};
  const used = new Set();
  let next = 0;
  let ok = 0;
  let failed = 0;
  const started = process.hrtime.bigint();
  const deadline = Date.now() + opts.duration;
  // At least one session per address, so "from N addresses" holds even in short runs.
  const more = () => Date.now() < deadline || next < ips.length;
  await Promise.all(
    Array.from({ length: opts.concurrency }, async () => {
      while (more()) {
        const i = next++;
        const ip = ips[i % ips.length];
        used.add(ip);
        try {
          await session(opts, ip, `t${i}`);
          ok++;
        } catch (err) {
          failed++;
          const kind = err.kind || String(err.message || err);
          failures[kind] = (failures[kind] || 0) + 1;
        }
      }
    }),
  );
  const seconds = Number(process.hrtime.bigint() - started) / 1e9;
  const sessions = ok + failed;
  return {
    sessions,
    ok,
    failed,
    success: sessions ? ok / sessions : 0,
    sessionsPerSec: ok / seconds,
    attemptsPerSec: sessions / seconds,
    addresses: used.size,
    seconds,
    failures,
  };
}

module.exports = { run };

if (require.main === module) {
  const opts = parseArgs(process.argv.slice(2));
  const warmup = opts.warmup > 0 ? run({ ...opts, duration: opts.warmup, ips: Math.min(opts.ips, 32) }) : Promise.resolve();
  // A line on stdout when the measured run starts, so the caller can sample CPU from there.
  warmup
    .then(() => {
      if (opts.json) console.log(JSON.stringify({ event: 'measuring' }));
      return run(opts);
    })
    .then(
      (r) => {
        if (opts.json) console.log(JSON.stringify(r));
        else {
          console.log(
            `${r.ok}/${r.sessions} sessions ok (${(100 * r.success).toFixed(1)}%) from ${r.addresses} addresses, ` +
              `${r.sessionsPerSec.toFixed(0)} sessions/s in ${r.seconds.toFixed(2)} s`,
          );
          for (const [k, n] of Object.entries(r.failures)) console.log(`  ${n} x ${k}`);
        }
      },
      (err) => {
        console.error(err);
        process.exit(1);
      },
    );
}
