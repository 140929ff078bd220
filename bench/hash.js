'use strict';
// Route hashes: speed and evenness. Reproduces sticky-cluster's benchmark (benchmark/index.js of
// sticky-cluster 0.3.5: int31 against djb2 over random IPv4/IPv6 text) and extends it with
// sticky-session 1.1.2's real hash, sticky-rs's native djb2 and an evenness table.
// usage: node bench/hash.js [workers=10] [addresses=100000] [--seed N]
const path = require('node:path');
const { execFileSync, spawnSync } = require('node:child_process');
const fs = require('node:fs');

const args = process.argv.slice(2).filter((a) => !a.startsWith('--'));
const WORKERS = parseInt(args[0], 10) || 10;
const ADDRESSES = parseInt(args[1], 10) || 100000;
const seedArg = process.argv.indexOf('--seed');
const SEED = seedArg > 0 ? Number(process.argv[seedArg + 1]) : 20261121;

const { native } = require('../lib/binding');
const stringHash = require('string-hash');
// sticky-session 1.1.2 hashes `ip.toBuffer(socket.remoteAddress)` with Master.prototype.hash and a
// seed drawn once per primary; use its own code and its own `ip` module.
const stickySessionDir = path.dirname(require.resolve('sticky-session/package.json'));
const StickySessionMaster = require(path.join(stickySessionDir, 'lib/sticky/master.js'));
const ipModule = require(require.resolve('ip', { paths: [stickySessionDir] }));

// ---- seeded PRNG (mulberry32) and chance.js's ip()/ipv6() on top of it
function mulberry32(a) {
  return () => {
    a |= 0;
    a = (a + 0x6d2b79f5) | 0;
    let t = Math.imul(a ^ (a >>> 15), 1 | a);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
const rand = mulberry32(SEED);
const natural = (min, max) => Math.floor(rand() * (max - min + 1)) + min;
// chance.ip(): natural(1..254).natural(0..255).natural(0..255).natural(1..254)
const chanceIp = () => `${natural(1, 254)}.${natural(0, 255)}.${natural(0, 255)}.${natural(1, 254)}`;
// chance.ipv6(): 8 groups of chance.hash({ length: 4 }) (lowercase hex, leading zeros kept)
const hex4 = () => Array.from({ length: 4 }, () => '0123456789abcdef'[natural(0, 15)]).join('');
const chanceIpv6 = () => Array.from({ length: 8 }, hex4).join(':');

// ---- the hashes
// 'int31' of sticky-cluster's benchmark (sticky-session 0.x): split on dots, parseInt, int31 mix.
function hashInt31(parts, seed) {
  let hash = parts.reduce((r, num) => {
    r += parseInt(num, 10);
    r %= 2147483648;
    r += r << 10;
    r %= 2147483648;
    r ^= r >> 6;
    return r;
  }, seed);
  hash += hash << 3;
  hash %= 2147483648;
  hash ^= hash >> 11;
  hash += hash << 15;
  hash %= 2147483648;
  return hash >>> 0;
}
const int31Seed = ~~(rand() * 1e9);
const int31 = (text) => hashInt31((text || '').split(/\./g), int31Seed);

// sticky-session 1.1.2: Master.prototype.hash(ip.toBuffer(remoteAddress)) with a per-primary seed.
const stickySessionSeed = (rand() * 0xffffffff) | 0;
const ssHash = StickySessionMaster.prototype.hash.bind({ seed: stickySessionSeed });
const stickySession = (text) => ssHash(ipModule.toBuffer(text || '127.0.0.1'));

// murmur3's fmix32 finalizer, applied to djb2's output (a candidate opt-in "mixed" hash).
function fmix32(h) {
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return h >>> 0;
}

// ---- statistics
function chiSquare(scatter, n) {
  const expected = n / scatter.length;
  return scatter.reduce((s, o) => s + (o - expected) ** 2 / expected, 0);
}
// Wilson-Hilferty: the chi-square value a uniform hash exceeds with probability 0.001.
const chiCritical = (df) => df * (1 - 2 / (9 * df) + 3.0902 * Math.sqrt(2 / (9 * df))) ** 3;
const maxMin = (scatter) => {
  const min = Math.min(...scatter);
  return min === 0 ? Infinity : Math.max(...scatter) / min;
};
const fmt = (x, d = 1) => (x === Infinity ? '∞' : x.toFixed(d));

// ---- the seed benchmark
console.log(`generating ${ADDRESSES} random ips (seed ${SEED}, half IPv4, half full-length IPv6)...`);
const ips = [];
for (let i = ADDRESSES; --i >= 0; ) ips.push(i % 2 ? chanceIp() : chanceIpv6());
const nodeTexts = ips.map((ip) => native.addressText(ip)); // what socket.remoteAddress would show

function benchmark(name, note, fn) {
  const scatter = new Array(WORKERS).fill(0);
  const start = process.hrtime.bigint();
  fn(scatter);
  const ms = Number(process.hrtime.bigint() - start) / 1e6;
  console.log(`${name}${note ? `  (${note})` : ''}`);
  console.log('  time (ms): ', Math.round(ms));
  console.log('  scatter: ', scatter);
  console.log(
    `  chi-square: ${chiSquare(scatter, ADDRESSES).toFixed(1)} (df ${WORKERS - 1}, 99.9% critical ${chiCritical(WORKERS - 1).toFixed(1)})`,
  );
  return scatter;
}
const perAddress = (hash, inputs) => (scatter) => {
  let i = inputs.length;
  while (--i >= 0) scatter[hash(inputs[i]) % WORKERS]++;
};

console.log(`benchmarking, ${WORKERS} workers...`);
benchmark('int31', 'sticky-cluster benchmark / sticky-session 0.x, raw text', perAddress(int31, ips));
benchmark('sticky-session 1.1.2', 'ip.toBuffer + seeded int31 mix, per call, Node text', perAddress(stickySession, nodeTexts));
benchmark('djb2', 'string-hash in JS, raw text as in the seed benchmark', perAddress(stringHash, ips));
const djb2Js = benchmark(
  'djb2 (string-hash, Node text)',
  'string-hash in JS on socket.remoteAddress text',
  perAddress(stringHash, nodeTexts),
);
const djb2Native = benchmark(
  'sticky-rs native djb2, one call per address',
  'native.djb2(text) % workers, Node text',
  perAddress(native.djb2, nodeTexts),
);
const batched = benchmark('sticky-rs native slotsOf, one batched call', 'parse + format + hash in Rust', (scatter) => {
  for (const slot of native.slotsOf(ips, WORKERS)) scatter[slot]++;
});
const same = (a, b) => a.every((x, i) => x === b[i]);
console.log(
  `\nparity: string-hash(Node text) == native.djb2 == slotsOf: ${same(djb2Js, djb2Native) && same(djb2Js, batched) ? 'yes' : 'NO'}`,
);
{
  // per address, not only per bucket
  const slots = native.slotsOf(ips, WORKERS);
  const bad = nodeTexts.findIndex((t, i) => stringHash(t) % WORKERS !== slots[i]);
  if (bad >= 0) {
    console.log(`  MISMATCH at ${ips[bad]} (${nodeTexts[bad]})`);
    process.exitCode = 1;
  }
}

// ---- evenness table
const KS = [2, 3, 4, 8, 10, 16, 32];
const block = [];
for (let x = 0; x < 256; x++) for (let y = 0; y < 256; y++) block.push(`10.0.${x}.${y}`);
const DATASETS = [
  [`random (${ADDRESSES}, Node text)`, nodeTexts],
  [
    `random IPv4 only (${ips.filter((a) => !a.includes(':')).length}, as ::ffff:a.b.c.d)`,
    ips.filter((a) => !a.includes(':')).map((a) => `::ffff:${a}`),
  ],
  ['10.0.0.0/16 as ::ffff:10.0.x.y (dual-stack listener)', block.map((a) => `::ffff:${a}`)],
  ['10.0.0.0/16 as 10.0.x.y (IPv4 listener)', block],
];
const HASHES = [
  ['djb2 (sticky-cluster, sticky-rs)', (t) => stringHash(t)],
  ['djb2 + fmix32 (candidate)', (t) => fmix32(stringHash(t))],
  ['sticky-session 1.1.2', stickySession],
  ['int31 (seed benchmark)', int31],
];

console.log('\n## Evenness: chi-square / max:min bucket ratio\n');
console.log(`99.9% critical chi-square: ${KS.map((k) => `K=${k}: ${chiCritical(k - 1).toFixed(1)}`).join(', ')}.`);
console.log(`Seeds: sticky-session ${stickySessionSeed}, int31 ${int31Seed} (both are random per primary in the real packages).\n`);
console.log(`| addresses | hash | ${KS.map((k) => `K=${k}`).join(' | ')} |`);
console.log(`|---|---|${KS.map(() => '---:').join('|')}|`);
for (const [dname, texts] of DATASETS) {
  for (const [hname, hash] of HASHES) {
    const hashes = texts.map(hash);
    const cells = KS.map((k) => {
      const scatter = new Array(k).fill(0);
      for (const h of hashes) scatter[h % k]++;
      return `${fmt(chiSquare(scatter, texts.length))} / ${fmt(maxMin(scatter), 2)}`;
    });
    console.log(`| ${dname} | ${hname} | ${cells.join(' | ')} |`);
  }
}
// The djb2 weakness in one line: modulo 2^k, k <= 5, djb2 is the XOR of the characters' low bits.
{
  const perm = ['10.0.12.34', '10.0.21.43', '10.0.34.12', '10.0.43.21', '01.0.12.34'];
  console.log(`\ndjb2 % 32 ignores character order: ${perm.map((t) => `${t} -> ${stringHash(t) % 32}`).join(', ')}`);
}

// ---- ns per address
function bestOf(n, fn) {
  let best = Infinity;
  for (let i = 0; i < n; i++) {
    const start = process.hrtime.bigint();
    fn();
    best = Math.min(best, Number(process.hrtime.bigint() - start));
  }
  return best;
}
const N = 100000;
const v4 = Array.from({ length: N }, chanceIp);
const v4Mapped = v4.map((a) => `::ffff:${a}`);
native.slotsOf(v4, WORKERS); // warm up
console.log(`\n## Cost per address (${N} IPv4 addresses, best of 5)\n`);
console.log('| path | ns/address | includes |');
console.log('|---|---:|---|');
const row = (name, ns, what) => console.log(`| ${name} | ${(ns / N).toFixed(1)} | ${what} |`);
row(
  'native slotsOf (batched)',
  bestOf(5, () => native.slotsOf(v4, WORKERS)),
  'JS string array -> Rust Vec<String> conversion, IP parse, format as Node text, djb2, % K, result array',
);
row(
  'native slotsOf, ::ffff: text',
  bestOf(5, () => native.slotsOf(v4Mapped, WORKERS)),
  'same, dual-stack form',
);
const v4Text = v4.map((a) => native.addressText(a));
row(
  'native djb2, one call each',
  bestOf(5, () => {
    for (let i = 0; i < N; i++) native.djb2(v4Text[i]) % WORKERS;
  }),
  'one napi call per address (hash only)',
);
row(
  'string-hash in JS',
  bestOf(5, () => {
    let s = 0;
    for (let i = 0; i < N; i++) s += stringHash(v4Text[i]) % WORKERS;
    return s;
  }),
  'hash only',
);
row(
  'sticky-session 1.1.2 in JS',
  bestOf(5, () => {
    let s = 0;
    for (let i = 0; i < N; i++) s += stickySession(v4Text[i]) % WORKERS;
    return s;
  }),
  'ip.toBuffer + hash',
);

// Pure Rust: bench/route-cost runs the router's own src/key/address.rs + djb2 (no napi, no parsing).
const routeCost = path.join(__dirname, 'route-cost', 'target', 'release', 'route-cost');
if (!fs.existsSync(routeCost)) {
  // small standalone crate (libc only); build it once, quietly, if cargo is there
  spawnSync('cargo', ['build', '--release', '--quiet', '--manifest-path', path.join(__dirname, 'route-cost', 'Cargo.toml')], {
    stdio: 'inherit',
  });
}
if (fs.existsSync(routeCost)) {
  try {
    const out = JSON.parse(execFileSync(routeCost, [String(N), String(WORKERS)], { encoding: 'utf8' }));
    console.log(
      `| Rust: router format + djb2 + % K, IPv4 | ${out.v4_ns.toFixed(1)} | src/key/address.rs AddressText::new(&SocketAddr) + djb2_ascii + %, as on accept |`,
    );
    console.log(`| Rust: router format + djb2 + % K, ::ffff: | ${out.mapped_ns.toFixed(1)} | same, peer on a dual-stack listener |`);
    console.log(`| Rust: format only, IPv4 | ${out.v4_format_ns.toFixed(1)} | AddressText::new |`);
    console.log(`| Rust: djb2 % K only, IPv4 text | ${out.v4_hash_ns.toFixed(1)} | djb2_ascii of pre-formatted text + % |`);
  } catch (err) {
    console.log(`| Rust route-cost | failed: ${err.message.split('\n')[0]} | |`);
  }
} else {
  console.log('| Rust route-cost | not built | cargo build --release --manifest-path bench/route-cost/Cargo.toml |');
}
