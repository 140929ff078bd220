'use strict';
// Installs the tarballs of `npm run pack:dist` the way a user would, in fresh projects, and checks
// what the user gets (run by .ci/run; `--skip-source-build` leaves out the slow cargo build):
// 1. with the platform package, from a PATH without cargo, rustc or a C compiler: installs in at
//    most 15 s (warm npm cache), at most 5 MB, require and import load the platform package, a
//    two-worker Express app keeps 20 client addresses on their djb2 slots; the addon needs at
//    most GLIBC_2.17; the links of the shipped README and docs point at shipped files;
// 2. without it and without cargo: `npm install` fails with the documented message;
//    with --ignore-scripts, `require('sticky-rs')` throws the same advice;
// 3. without it but with cargo: builds from source, leaves no target/ in node_modules or the temp dir.
const assert = require('node:assert/strict');
const { spawn, spawnSync } = require('node:child_process');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const readline = require('node:readline');
const stringHash = require('string-hash');
const { freePort, clientIp, get } = require('../__test__/helpers');
const { PACKAGE, VERSION, packageName, addonFile } = require('../lib/platform');
const { maxGlibc, compareVersions } = require('./glibc');

const KEY = 'linux-x64-gnu';
const LIMITS = { bytes: 5 * 1024 * 1024, installSeconds: 15, glibc: '2.17', clients: 20, workers: 2 };
const root = path.resolve(__dirname, '..');
const mainTarball = path.join(root, 'dist', `${PACKAGE}-${VERSION}.tgz`);
const platformTarball = path.join(root, 'dist', `${packageName(KEY)}-${VERSION}.tgz`);
const work = fs.mkdtempSync(path.join(os.tmpdir(), `${PACKAGE}-check-dist-`));
const measured = {};

/** The environment of a user shell: none of the variables `npm run` adds, nothing from cargo. */
function userEnv(extra) {
  const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !/^(npm_|CARGO|RUSTC|RUSTUP_TOOLCHAIN|STICKY_RS_)/i.test(k)));
  return { ...env, ...extra };
}

/** A PATH with node, npm and sh only; proves that cargo, rustc and C compilers are absent from it. */
function bareBin() {
  const bin = path.join(work, 'bin');
  fs.mkdirSync(bin);
  for (const tool of ['node', 'npm', 'sh']) {
    const found = spawnSync('sh', ['-c', `command -v ${tool}`], { encoding: 'utf8' }).stdout.trim();
    assert.ok(found, `${tool} not found on PATH`);
    fs.symlinkSync(fs.realpathSync(found), path.join(bin, tool));
  }
  for (const tool of ['cargo', 'rustc', 'cc', 'gcc', 'clang']) {
    const r = spawnSync(path.join(bin, 'sh'), ['-c', `command -v ${tool}`], { env: { PATH: bin } });
    assert.notEqual(r.status, 0, `${tool} is on the bare PATH`);
  }
  return bin;
}

function project(name) {
  const dir = path.join(work, name);
  fs.mkdirSync(dir);
  fs.writeFileSync(path.join(dir, 'package.json'), JSON.stringify({ name, version: '1.0.0', private: true }));
  return dir;
}

function npmInstall(dir, args, env) {
  const started = process.hrtime.bigint();
  const npm = env.PATH.split(':').map((d) => path.join(d, 'npm')).find((f) => fs.existsSync(f));
  const r = spawnSync(npm, ['install', '--no-audit', '--no-fund', ...args], { cwd: dir, env, encoding: 'utf8', timeout: 600_000 });
  const seconds = Number(process.hrtime.bigint() - started) / 1e9;
  return { status: r.status, output: `${r.stdout}\n${r.stderr}`, seconds };
}

function nodeEval(dir, code, env) {
  const r = spawnSync(process.execPath, ['-e', code], { cwd: dir, env, encoding: 'utf8', timeout: 30_000 });
  assert.equal(r.status, 0, `node -e failed in ${dir}:\n${r.stdout}\n${r.stderr}`);
  return r.stdout.trim();
}

function treeBytes(dir) {
  return fs.readdirSync(dir, { withFileTypes: true }).reduce((sum, e) => {
    const p = path.join(dir, e.name);
    return sum + (e.isDirectory() ? treeBytes(p) : fs.lstatSync(p).size);
  }, 0);
}

/** Every relative link of the package's README and docs names a file in the package. */
function checkLinks(pkgDir) {
  const docs = ['README.md', ...fs.readdirSync(path.join(pkgDir, 'docs')).map((f) => `docs/${f}`)];
  for (const doc of docs.filter((f) => f.endsWith('.md'))) {
    const text = fs.readFileSync(path.join(pkgDir, doc), 'utf8');
    for (const [, target] of text.matchAll(/\]\(([^)\s]+)\)/g)) {
      if (/^([a-z]+:|#)/i.test(target)) continue;
      const file = path.join(pkgDir, path.dirname(doc), target.split('#')[0]);
      assert.ok(fs.existsSync(file), `${doc} links to ${target}, which is not in the package`);
    }
  }
}

const APP = `
const http = require('node:http');
const express = require('express');
const sticky = require('sticky-rs');
const primary = sticky((callback) => {
  const app = express();
  app.get('/', (req, res) => res.json({ pid: process.pid, slot: Number(process.env.stickycluster_worker_index), address: req.socket.remoteAddress }));
  callback(http.createServer(app));
}, { concurrency: ${LIMITS.workers}, port: Number(process.env.PORT) });
if (primary) {
  let ready = 0;
  primary.on('ready', () => ++ready === ${LIMITS.workers} && console.log('ready ' + process.pid));
}
`;

/** Runs a two-worker app from `dir`; every client address stays on the worker of its djb2 slot. */
async function checkStickyApp(dir, env) {
  fs.writeFileSync(path.join(dir, 'app.js'), APP);
  const port = await freePort();
  const child = spawn(process.execPath, ['app.js'], { cwd: dir, env: { ...env, PORT: String(port) }, detached: true, stdio: ['ignore', 'pipe', 'inherit'] });
  const exited = new Promise((resolve) => child.once('exit', resolve));
  try {
    const primaryPid = await new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error('the app did not start 2 workers in 30 s')), 30_000);
      child.once('exit', (code) => reject(new Error(`the app exited with ${code}`)));
      readline.createInterface({ input: child.stdout }).on('line', (line) => {
        const m = /^ready (\d+)$/.exec(line);
        if (m) clearTimeout(timer), resolve(Number(m[1]));
      });
    });
    const pidOfSlot = new Map();
    for (let i = 0; i < LIMITS.clients; i++) {
      const ip = clientIp(i);
      const seen = new Set();
      for (let request = 0; request < 3; request++) {
        const { status, body } = await get(port, ip);
        assert.equal(status, 200);
        assert.equal(body.address, `::ffff:${ip}`);
        assert.equal(body.slot, stringHash(body.address) % LIMITS.workers, `${ip} served by slot ${body.slot}`);
        assert.notEqual(body.pid, primaryPid);
        seen.add(body.pid);
        if (!pidOfSlot.has(body.slot)) pidOfSlot.set(body.slot, body.pid);
        assert.equal(pidOfSlot.get(body.slot), body.pid, `slot ${body.slot} answered from two pids`);
      }
      assert.equal(seen.size, 1, `${ip} was served by ${[...seen]}`);
    }
    assert.equal(pidOfSlot.size, LIMITS.workers, 'every worker served some client');
  } finally {
    process.kill(-child.pid, 'SIGTERM');
    const timer = setTimeout(() => process.kill(-child.pid, 'SIGKILL'), 10_000);
    await exited;
    clearTimeout(timer);
  }
}

const REQUIRED_ADVICE = [
  `no native addon for ${KEY}`,
  `${packageName(KEY)} is not installed`,
  `npm rebuild ${PACKAGE}`,
  'pnpm approve-builds',
  'onlyBuiltDependencies',
  `yarn rebuild ${PACKAGE}`,
  `bun pm trust ${PACKAGE}`,
  'https://rustup.rs',
];

async function main() {
  for (const f of [mainTarball, platformTarball]) assert.ok(fs.existsSync(f), `${f} is missing: run \`npm run pack:dist\``);
  const bare = userEnv({ PATH: bareBin() });

  // 1. The prebuilt path. The first install warms the npm cache; the second is timed.
  assert.equal(npmInstall(project('warm-up'), [mainTarball, platformTarball, 'express'], bare).status, 0);
  const app = project('app');
  const install = npmInstall(app, [mainTarball, platformTarball, 'express'], bare);
  assert.equal(install.status, 0, install.output);
  measured.installSeconds = install.seconds.toFixed(1);
  assert.ok(install.seconds <= LIMITS.installSeconds, `install took ${measured.installSeconds} s`);
  const modules = path.join(app, 'node_modules');
  const ours = fs.readdirSync(modules).filter((n) => n.startsWith(PACKAGE));
  assert.deepEqual(ours.sort(), [PACKAGE, packageName(KEY)]);
  measured.bytes = ours.reduce((sum, n) => sum + treeBytes(path.join(modules, n)), 0);
  assert.ok(measured.bytes <= LIMITS.bytes, `node_modules/${PACKAGE}* holds ${measured.bytes} bytes`);
  assert.ok(!fs.existsSync(path.join(modules, PACKAGE, 'sticky_rs.node')), 'the install built from source');
  const loaded = nodeEval(app, `require('${PACKAGE}'); console.log(Object.keys(require.cache).filter((f) => f.endsWith('.node')).join())`, bare);
  assert.equal(loaded, path.join(fs.realpathSync(modules), packageName(KEY), addonFile(KEY)));
  measured.glibc = maxGlibc(loaded);
  assert.ok(compareVersions(measured.glibc, LIMITS.glibc) <= 0, `the addon needs GLIBC_${measured.glibc}`);
  const esm = nodeEval(app, `import('${PACKAGE}').then((m) => console.log(typeof m.default, m.listen === m.default.listen))`, bare);
  assert.equal(esm, 'function true', 'the ESM entry');
  checkLinks(path.join(modules, PACKAGE));
  await checkStickyApp(app, bare);
  console.log(`ok: prebuilt install, ${LIMITS.clients} clients sticky on ${LIMITS.workers} workers`);

  // 2. No prebuilt package, no cargo: the install fails and says what to do.
  const failed = npmInstall(project('no-toolchain'), [mainTarball, 'express'], bare);
  assert.notEqual(failed.status, 0, 'the install succeeded without an addon');
  for (const text of [...REQUIRED_ADVICE, 'cargo was not found']) assert.ok(failed.output.includes(text), `install output lacks "${text}":\n${failed.output}`);
  // Package managers that skip install scripts (pnpm 10, bun): the same advice at require().
  const skipped = project('scripts-skipped');
  assert.equal(npmInstall(skipped, [mainTarball, '--ignore-scripts'], bare).status, 0);
  const thrown = nodeEval(skipped, `try { require('${PACKAGE}') } catch (e) { console.log(e.code + '\\n' + e.message) }`, bare);
  assert.match(thrown, /^STICKY_RS_NO_ADDON\n/);
  for (const text of [...REQUIRED_ADVICE, 'not built from source']) assert.ok(thrown.includes(text), `require error lacks "${text}":\n${thrown}`);
  console.log('ok: without a prebuilt addon or cargo, install fails and require throws, with the advice');

  // 3. No prebuilt package, cargo present: builds from source in the temp dir and cleans up.
  if (!process.argv.includes('--skip-source-build')) {
    const tmp = path.join(work, 'tmp');
    fs.mkdirSync(tmp);
    const source = project('from-source');
    const built = npmInstall(source, [mainTarball], userEnv({ TMPDIR: tmp }));
    assert.equal(built.status, 0, built.output);
    measured.sourceSeconds = built.seconds.toFixed(1);
    const pkg = path.join(source, 'node_modules', PACKAGE);
    assert.ok(fs.existsSync(path.join(pkg, 'sticky_rs.node')), 'no sticky_rs.node after the source build');
    assert.ok(!fs.existsSync(path.join(pkg, 'target')), 'target/ left in node_modules');
    assert.deepEqual(fs.readdirSync(tmp), [], 'the build directory was left in TMPDIR');
    measured.sourceBytes = treeBytes(pkg);
    nodeEval(source, `require('${PACKAGE}')`, bare);
    console.log('ok: without a prebuilt addon, with cargo: built from source, no target/ left');
  }
  console.log(`measured: ${JSON.stringify(measured)}`);
}

main()
  .then(() => fs.rmSync(work, { recursive: true, force: true }))
  .catch((err) => {
    console.error(err);
    console.error(`(projects kept in ${work})`);
    process.exitCode = 1;
  });
