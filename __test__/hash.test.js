'use strict';
// Route-key parity: the native formatter and djb2 agree with Node and with string-hash.
const net = require('node:net');
const stringHash = require('string-hash');
const { native } = require('../lib/binding');
const { freePort, clientIp, startFixture, stopAll, get, pool } = require('./helpers');

afterEach(stopAll);

const VECTORS = [
  ['Mary had a little lamb.', 1766333550],
  ['Hello, world!', 343662184],
  ['127.0.0.1', 340519950],
  ['::ffff:127.0.0.1', 339916724],
  ['1.2.3.4', 3534154447],
  ['::ffff:1.2.3.4', 1215779413],
  ['::1', 193359316],
  ['2001:db8::1', 825529651],
  ['fe80::1%eth0', 2739542867],
  ['', 5381],
];

// A seeded generator, so a failure can be replayed.
function rng(seed) {
  let s = seed >>> 0;
  return () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function randomAddresses(count, seed) {
  const r = rng(seed);
  const byte = () => Math.floor(r() * 256);
  const word = () => (r() < 0.3 ? 0 : Math.floor(r() * 65536)).toString(16);
  const out = [];
  for (let i = 0; i < count; i++) {
    const v4 = `${byte()}.${byte()}.${byte()}.${byte()}`;
    const kind = i % 4;
    if (kind === 0) out.push(v4);
    else if (kind === 1) out.push(`::ffff:${v4}`);
    else if (kind === 2) out.push(Array.from({ length: 8 }, word).join(':'));
    else out.push(`::${v4}`); // IPv4-compatible: Node prints it dotted, Rust's Display does not
  }
  return out;
}

test('djb2 matches the string-hash vectors', () => {
  for (const [text, hash] of VECTORS) {
    expect(native.djb2(text)).toBe(hash);
    expect(stringHash(text)).toBe(hash);
  }
  expect(native.djb2('é😀')).toBe(stringHash('é😀'));
});

test('10,000 random IPv4 / IPv6 / mapped addresses: same text as Node, same slot as string-hash', () => {
  const addresses = randomAddresses(10000, 42);
  const texts = addresses.map((a) => native.addressText(a));
  const nodeTexts = addresses.map((a) => new net.SocketAddress({ address: a, family: net.isIPv4(a) ? 'ipv4' : 'ipv6' }).address);
  expect(texts).toEqual(nodeTexts);
  for (const slots of [1, 2, 3, 4, 7, 10, 16]) {
    const native_ = native.slotsOf(addresses, slots);
    const expected = nodeTexts.map((t) => stringHash(t) % slots);
    expect(native_).toEqual(expected);
  }
  for (const t of nodeTexts.slice(0, 2000)) expect(native.djb2(t)).toBe(stringHash(t));
});

// murmur3's fmix32, written independently of the Rust one.
function fmix32(h) {
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b) >>> 0;
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35) >>> 0;
  return (h ^ (h >>> 16)) >>> 0;
}

test("hash 'djb2-mix' is fmix32(string-hash) and spreads a sequential /16 evenly over 16 and 32 workers", () => {
  const addresses = randomAddresses(5000, 7);
  const texts = addresses.map((a) => native.addressText(a));
  for (const slots of [2, 16, 32]) {
    expect(native.slotsOf(addresses, slots, 'djb2-mix')).toEqual(texts.map((t) => fmix32(stringHash(t)) % slots));
  }
  const block = [];
  for (let x = 0; x < 256; x++) for (let y = 0; y < 256; y++) block.push(`::ffff:10.0.${x}.${y}`);
  for (const k of [16, 32]) {
    const spread = (hash) => {
      const counts = new Array(k).fill(0);
      for (const s of native.slotsOf(block, k, hash)) counts[s]++;
      const expected = block.length / k;
      return counts.reduce((sum, c) => sum + (c - expected) ** 2 / expected, 0);
    };
    // 99.9% critical values of chi-square: 37.7 (15 d.f.), 61.1 (31 d.f.).
    expect(spread('djb2-mix')).toBeLessThan(k === 16 ? 37.7 : 61.1);
    expect(spread('djb2')).toBeGreaterThan(1000); // the weakness the option exists for
  }
  expect(() => native.slotsOf(['::1'], 2, 'md5')).toThrow(/unknown hash "md5"/);
});

test('bad addresses are refused with a clear error', () => {
  expect(() => native.addressText('1.2.3')).toThrow(/not an IP address: 1\.2\.3/);
  expect(() => native.slotsOf(['::1', 'nope'], 2)).toThrow(/not an IP address: nope/);
});

// Real connections: the worker reports Node's own remoteAddress; the slot that served it must
// be djb2(remoteAddress) % workers, on a dual-stack listener and on an IPv4-only one.
test("hash 'djb2-mix' routes real connections by fmix32(djb2(remoteAddress)) % workers", async () => {
  const port = await freePort();
  const app = startFixture('cluster-app.js', { PORT: port, WORKERS: 4, HASH: 'djb2-mix' });
  await app.count('ready', 4);
  const answers = await pool(
    Array.from({ length: 60 }, (_, i) => i),
    10,
    (i) => get(port, clientIp(i)),
  );
  for (const { status, body } of answers) {
    expect(status).toBe(200);
    expect(body.slot).toBe(fmix32(stringHash(body.remoteAddress)) % 4);
  }
});

describe.each([
  ['::', (i) => clientIp(i), '127.0.0.1', /^::ffff:127\.0\./],
  ['0.0.0.0', (i) => clientIp(i), '127.0.0.1', /^127\.0\./],
  ['::', () => '::1', '::1', /^::1$/],
])('address text of real connections on host %s', (host, ip, target, shape) => {
  test('matches Node and routes by string-hash', async () => {
    const port = await freePort();
    const app = startFixture('cluster-app.js', { PORT: port, WORKERS: 3, HOST: host });
    await app.count('ready', 3);
    const answers = await pool(
      Array.from({ length: 30 }, (_, i) => i),
      10,
      (i) => get(port, ip(i), '/', { host: target }),
    );
    for (const { status, body } of answers) {
      expect(status).toBe(200);
      expect(body.remoteAddress).toMatch(shape);
      expect(body.slot).toBe(stringHash(body.remoteAddress) % 3);
    }
  });
});
