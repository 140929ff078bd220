'use strict';
// Installs the tarballs of `npm run pack:dist` the way a user would, in fresh projects, and checks
// what the user gets (run by .ci/run; `--skip-source-build` leaves out the slow cargo build):
// 0. without installing: the published manifest (repository/homepage/bugs, no install script,
//    only scripts whose files are shipped, a `default` export condition, a sha256 per platform
//    addon), the README's first screen and examples, static checks of all six addons
//    (scripts/check-addons.js);
// 1. with the platform package, from a PATH without cargo, rustc or a C compiler: installs in at
//    most 15 s (warm npm cache), silently, at most 5 MB, require and import load the platform
//    package, a two-worker Express app keeps 20 client addresses on their djb2 slots and exits 0
//    on SIGTERM; the addon needs at most GLIBC_2.17; the links of the shipped README and docs
//    point at shipped files; unpacked into node_modules by hand it loads, with other bytes it is refused;
// 2. without it and without cargo: the install succeeds, `require('sticky-rs')` throws, leading
//    with the fix (install the platform tarball);
// 3. without it but with cargo: `npx sticky-rs-build` builds from source, leaves no target/ in
//    node_modules or the temp dir;
// 4. with --arm64-node <file>: the arm64-gnu package installed (--cpu=arm64) and run under
//    qemu-aarch64, dispatch 'primary' and 'auto' (which falls back to 'primary' there).
const assert = require('node:assert/strict');
const { execFileSync, spawn, spawnSync } = require('node:child_process');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const readline = require('node:readline');
const stringHash = require('string-hash');
const { freePort, clientIp, get } = require('../__test__/helpers');
const { PACKAGE, VERSION, PLATFORMS, ADDON_HASHES, BUILD_COMMAND, packageName, addonFile } = require('../lib/platform');
const { maxGlibc, compareVersions } = require('./glibc');
const { checkAddons } = require('./check-addons');

const KEY = 'linux-x64-gnu';
const LIMITS = { bytes: 5 * 1024 * 1024, installSeconds: 15, glibc: '2.17', clients: 20, workers: 2 };
const root = path.resolve(__dirname, '..');
const mainTarball = path.join(root, 'dist', `${PACKAGE}-${VERSION}.tgz`);
const platformTarball = path.join(root, 'dist', `${packageName(KEY)}-${VERSION}.tgz`);
const work = require.main === module ? fs.mkdtempSync(path.join(os.tmpdir(), `${PACKAGE}-check-dist-`)) : null;
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
  const npm = env.PATH.split(':')
    .map((d) => path.join(d, 'npm'))
    .find((f) => fs.existsSync(f));
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
// Under qemu (scripts/check-arm64.js) workers must be forked through the wrapper that runs qemu.
if (process.env.NODE_WRAPPER) process.execPath = process.env.NODE_WRAPPER;
const primary = sticky((callback) => {
  const app = express();
  app.get('/', (req, res) => res.json({ pid: process.pid, slot: Number(process.env.stickycluster_worker_index), address: req.socket.remoteAddress }));
  callback(http.createServer(app));
}, { concurrency: ${LIMITS.workers}, port: Number(process.env.PORT), dispatch: process.env.DISPATCH || 'auto' });
if (primary) {
  let ready = 0;
  primary.on('ready', () => ++ready === ${LIMITS.workers} && console.log('ready ' + process.pid + ' ' + primary.stats().dispatch));
}
`;

/**
 * Runs a two-worker app from `dir` with `node` (argv prefix: e.g. a qemu wrapper); every client
 * address stays on the worker of its djb2 slot; then SIGTERM to the primary alone (as a
 * supervisor sends it) must end everything with exit code 0. Returns `{ dispatch }` as stats() said.
 */
async function checkStickyApp(dir, env, { node = [process.execPath], dispatch = 'auto', readyMs = 30_000 } = {}) {
  fs.writeFileSync(path.join(dir, 'app.js'), APP);
  const port = await freePort();
  const child = spawn(node[0], [...node.slice(1), 'app.js'], {
    cwd: dir,
    env: { ...env, PORT: String(port), DISPATCH: dispatch },
    detached: true,
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  const exited = new Promise((resolve) => child.once('exit', (code, signal) => resolve(code ?? signal)));
  let terminated = false;
  try {
    const [primaryPid, used] = await new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`the app did not start ${LIMITS.workers} workers in ${readyMs / 1000} s`)), readyMs);
      child.once('exit', (code) => reject(new Error(`the app exited with ${code}`)));
      readline.createInterface({ input: child.stdout }).on('line', (line) => {
        const m = /^ready (\d+) (\w+)$/.exec(line);
        if (!m) return;
        clearTimeout(timer);
        resolve([Number(m[1]), m[2]]);
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
    process.kill(primaryPid, 'SIGTERM');
    terminated = true;
    const code = await Promise.race([exited, new Promise((resolve) => setTimeout(resolve, 30_000, 'no exit 30 s after SIGTERM'))]);
    assert.equal(code, 0, "the primary's exit after SIGTERM");
    return { dispatch: used };
  } finally {
    if (child.exitCode === null && child.signalCode === null) {
      if (!terminated) process.kill(-child.pid, 'SIGTERM');
      const timer = setTimeout(() => process.kill(-child.pid, 'SIGKILL'), 10_000);
      await exited;
      clearTimeout(timer);
    }
    try {
      process.kill(-child.pid, 'SIGKILL'); // workers left behind, if any
    } catch {}
  }
}

const REQUIRED_ADVICE = [
  `no native addon for ${KEY}`,
  `${packageName(KEY)} is not installed`,
  `npm install ./${packageName(KEY)}-${VERSION}.tgz`,
  '--omit=optional',
  `npx ${BUILD_COMMAND}`,
  `pnpm exec ${BUILD_COMMAND}`,
  `bunx ${BUILD_COMMAND}`,
  'https://rustup.rs',
];

/** The published manifest: links for the registry page, no install script, only shipped scripts, `default`. */
function checkManifest(pkgDir) {
  const m = JSON.parse(fs.readFileSync(path.join(pkgDir, 'package.json'), 'utf8'));
  assert.match(m.repository?.url ?? '', /^git\+https:\/\//, "repository.url (the registry resolves the README's relative links with it)");
  assert.ok(m.homepage && m.bugs?.url, 'homepage and bugs');
  for (const hook of ['preinstall', 'install', 'postinstall', 'prepare'])
    assert.equal(m.scripts?.[hook], undefined, `the published package has a ${hook} script`);
  for (const [name, command] of Object.entries(m.scripts ?? {})) {
    const files = [...command.matchAll(/[\w./-]+\.m?js\b/g)].map((f) => f[0]);
    assert.ok(
      files.length && files.every((f) => fs.existsSync(path.join(pkgDir, f))),
      `script ${name} (${command}) runs files that are not shipped`,
    );
  }
  assert.equal(m.exports?.['.']?.default, './index.js', 'exports["."].default');
  assert.equal(Object.keys(m.exports['.']).pop(), 'default', 'default must be the last condition');
  assert.equal(m.bin?.[BUILD_COMMAND], 'scripts/build.js');
  assert.equal(m.peerDependenciesMeta?.['@types/node']?.optional, true, '@types/node: an optional peer dependency');
  assert.match(
    fs.readFileSync(path.join(pkgDir, 'index.d.ts'), 'utf8'),
    /^\/\/\/ <reference types="node" \/>/,
    'index.d.ts references @types/node',
  );
  assert.deepEqual(Object.keys(m.optionalDependencies ?? {}).sort(), PLATFORMS.map((p) => packageName(p.key)).sort());
  const hashes = JSON.parse(fs.readFileSync(path.join(pkgDir, path.relative(root, ADDON_HASHES)), 'utf8'));
  assert.deepEqual(Object.keys(hashes).sort(), PLATFORMS.map((p) => p.key).sort(), 'a sha256 per platform package');
  for (const [key, hash] of Object.entries(hashes)) assert.match(hash, /^[0-9a-f]{64}$/, key);
  return hashes;
}

/**
 * The README's first screen (40 lines) says that nothing is published and how to install today,
 * with Express in the install line; every JavaScript/TypeScript example that uses `app` defines it.
 */
function checkReadme(file) {
  const text = fs.readFileSync(file, 'utf8');
  const screen = text.split('\n').slice(0, 40).join('\n');
  assert.match(screen, /not (yet )?published/i, 'the first screen states the release status');
  const install = screen.split('\n').find((l) => /^npm install .*dist\/sticky-rs-/.test(l));
  assert.ok(install, 'the first screen shows how to install the tarballs today');
  assert.match(install, /\bexpress\b/, 'the install line installs Express, which the first example needs');
  const blocks = [...text.matchAll(/```(?:js|ts|mjs|javascript)\n([\s\S]*?)```/g)].map((m) => m[1]);
  const undefinedApp = blocks.filter(
    (b) => /\bapp\b/.test(b) && !/\b(const|let|var)\s+app\b|\bimport\s+app\b|\(\s*app\s*\)\s*=>|function\s*\w*\s*\(\s*app\b/.test(b),
  );
  assert.deepEqual(
    undefinedApp.map((b) => b.split('\n')[0]),
    [],
    'README examples use an undefined `app`',
  );
}

/** The platform package unpacked into node_modules by hand loads; a different addon there is refused. */
function checkHashes(bare) {
  const byHand = project('by-hand');
  for (const [tarball, name] of [
    [mainTarball, PACKAGE],
    [platformTarball, packageName(KEY)],
  ]) {
    const into = path.join(byHand, 'node_modules', name);
    fs.mkdirSync(into, { recursive: true });
    execFileSync('tar', ['-xzf', tarball, '-C', into, '--strip-components=1']);
  }
  const loaded = nodeEval(
    byHand,
    `require('${PACKAGE}'); console.log(Object.keys(require.cache).filter((f) => f.endsWith('.node')).join())`,
    bare,
  );
  assert.equal(loaded, path.join(fs.realpathSync(byHand), 'node_modules', packageName(KEY), addonFile(KEY)), 'unpacked by hand');
  // A squatter's package of that name and version: any other addon bytes.
  const addon = path.join(byHand, 'node_modules', packageName(KEY), addonFile(KEY));
  fs.appendFileSync(addon, Buffer.from([0]));
  const thrown = nodeEval(
    byHand,
    `try { require('${PACKAGE}'); console.log('loaded') } catch (e) { console.log(e.code + '\\n' + e.message) }`,
    bare,
  );
  assert.match(thrown, /^STICKY_RS_NO_ADDON\n/, 'an addon with another sha256 was loaded');
  assert.match(thrown, /is not the one released with .*: refused/);
}

async function main() {
  for (const f of [mainTarball, platformTarball]) assert.ok(fs.existsSync(f), `${f} is missing: run \`npm run pack:dist\``);
  const bare = userEnv({ PATH: bareBin() });

  // 0. What can be checked without installing: the manifest, the README, every platform's addon.
  const unpacked = path.join(work, 'unpacked');
  fs.mkdirSync(unpacked);
  execFileSync('tar', ['-xzf', mainTarball, '-C', unpacked]);
  checkManifest(path.join(unpacked, 'package'));
  checkReadme(path.join(unpacked, 'package', 'README.md'));
  measured.addons = checkAddons();
  console.log('ok: manifest, README first screen, the six addons (static checks)');

  // 1. The prebuilt path. The first install warms the npm cache; the second is timed.
  assert.equal(npmInstall(project('warm-up'), [mainTarball, platformTarball, 'express'], bare).status, 0);
  const app = project('app');
  const install = npmInstall(app, [mainTarball, platformTarball, 'express'], bare);
  assert.equal(install.status, 0, install.output);
  assert.doesNotMatch(install.output, /sticky-rs(-build)?:|install script/i, 'the install ran or mentioned an install script');
  measured.installSeconds = install.seconds.toFixed(1);
  assert.ok(install.seconds <= LIMITS.installSeconds, `install took ${measured.installSeconds} s`);
  const modules = path.join(app, 'node_modules');
  const ours = fs.readdirSync(modules).filter((n) => n.startsWith(PACKAGE));
  assert.deepEqual(ours.sort(), [PACKAGE, packageName(KEY)]);
  measured.bytes = ours.reduce((sum, n) => sum + treeBytes(path.join(modules, n)), 0);
  assert.ok(measured.bytes <= LIMITS.bytes, `node_modules/${PACKAGE}* holds ${measured.bytes} bytes`);
  assert.ok(!fs.existsSync(path.join(modules, PACKAGE, 'sticky_rs.node')), 'the install built from source');
  const loaded = nodeEval(
    app,
    `require('${PACKAGE}'); console.log(Object.keys(require.cache).filter((f) => f.endsWith('.node')).join())`,
    bare,
  );
  assert.equal(loaded, path.join(fs.realpathSync(modules), packageName(KEY), addonFile(KEY)));
  measured.glibc = maxGlibc(loaded);
  assert.ok(compareVersions(measured.glibc, LIMITS.glibc) <= 0, `the addon needs GLIBC_${measured.glibc}`);
  const esm = nodeEval(app, `import('${PACKAGE}').then((m) => console.log(typeof m.default, m.listen === m.default.listen))`, bare);
  assert.equal(esm, 'function true', 'the ESM entry');
  checkLinks(path.join(modules, PACKAGE));
  await checkStickyApp(app, bare);
  console.log(`ok: prebuilt install, ${LIMITS.clients} clients sticky on ${LIMITS.workers} workers, exit 0 on SIGTERM`);
  checkHashes(bare);
  console.log('ok: unpacked into node_modules by hand it loads; an addon with another sha256 is refused');

  // 2. No prebuilt package, no cargo: the install succeeds (no install script); require() throws,
  // leading with the fix: install the platform tarball.
  const missing = project('no-platform-package');
  const plain = npmInstall(missing, [mainTarball, 'express'], bare);
  assert.equal(plain.status, 0, plain.output);
  const thrown = nodeEval(missing, `try { require('${PACKAGE}') } catch (e) { console.log(e.code + '\\n' + e.message) }`, bare);
  assert.match(thrown, /^STICKY_RS_NO_ADDON\n/);
  for (const text of [...REQUIRED_ADVICE, 'not built from source'])
    assert.ok(thrown.includes(text), `require error lacks "${text}":\n${thrown}`);
  const lines = thrown.split('\n');
  assert.deepEqual(
    [lines[2], lines[3].trim().startsWith('Install the platform package')],
    ['Fix:', true],
    `the error does not lead with the fix:\n${thrown}`,
  );
  console.log('ok: without a prebuilt addon, require throws, leading with the fix');

  // 3. No prebuilt package, cargo present: `npx sticky-rs-build` builds in the temp dir and cleans up.
  if (!process.argv.includes('--skip-source-build')) {
    const tmp = path.join(work, 'tmp');
    fs.mkdirSync(tmp);
    const started = process.hrtime.bigint();
    const npx = spawnSync('npx', ['--no-install', BUILD_COMMAND], {
      cwd: missing,
      env: userEnv({ TMPDIR: tmp }),
      encoding: 'utf8',
      timeout: 900_000,
    });
    assert.equal(npx.status, 0, `${npx.stdout}\n${npx.stderr}`);
    measured.sourceSeconds = (Number(process.hrtime.bigint() - started) / 1e9).toFixed(1);
    const pkg = path.join(missing, 'node_modules', PACKAGE);
    assert.ok(fs.existsSync(path.join(pkg, 'sticky_rs.node')), 'no sticky_rs.node after the source build');
    assert.ok(!fs.existsSync(path.join(pkg, 'target')), 'target/ left in node_modules');
    assert.deepEqual(fs.readdirSync(tmp), [], 'the build directory was left in TMPDIR');
    measured.sourceBytes = treeBytes(pkg);
    nodeEval(missing, `require('${PACKAGE}')`, bare);
    console.log(`ok: without a prebuilt addon, with cargo: npx ${BUILD_COMMAND} built from source, no target/ left`);
  }

  // 4. arm64 under qemu (--arm64-node <arm64 node binary>): installed from the tarballs without
  // Rust, a two-worker app in dispatch 'primary' and 'auto' (which must fall back to it).
  const arm64At = process.argv.indexOf('--arm64-node');
  if (arm64At >= 0) {
    const arm64Node = path.resolve(process.argv[arm64At + 1]);
    const arm64Tarball = path.join(root, 'dist', `${packageName('linux-arm64-gnu')}-${VERSION}.tgz`);
    // Workers fork process.execPath, which the app points at this wrapper (NODE_WRAPPER). The
    // arm64 loader is named explicitly: Debian's cross libc has no /lib/ld-linux-aarch64.so.1.
    const wrapper = path.join(work, 'node-arm64');
    const qemu = execFileSync('sh', ['-c', 'command -v qemu-aarch64'], { encoding: 'utf8' }).trim();
    const libs = '/usr/aarch64-linux-gnu/lib';
    fs.writeFileSync(
      wrapper,
      `#!/bin/sh\nexec ${qemu} ${libs}/ld-linux-aarch64.so.1 --library-path ${libs} ${JSON.stringify(arm64Node)} "$@"\n`,
      { mode: 0o755 },
    );
    const env = { ...bare, NODE_WRAPPER: wrapper };
    // npm itself runs on the arm64 Node, so it picks packages for arm64 as it would on such a machine.
    const npmCli = fs.realpathSync(
      path.join(path.dirname(fs.realpathSync(execFileSync('sh', ['-c', 'command -v npm'], { encoding: 'utf8' }).trim())), 'npm-cli.js'),
    );
    const arm64 = project('arm64');
    const started = Date.now();
    const r = spawnSync(wrapper, [npmCli, 'install', '--no-audit', '--no-fund', mainTarball, arm64Tarball, 'express'], {
      cwd: arm64,
      env,
      encoding: 'utf8',
      timeout: 600_000,
    });
    assert.equal(r.status, 0, `${r.stdout}\n${r.stderr}`);
    assert.ok(fs.existsSync(path.join(arm64, 'node_modules', packageName('linux-arm64-gnu'))));
    const installSeconds = ((Date.now() - started) / 1000).toFixed(1);
    const version = execFileSync(wrapper, ['-p', 'process.arch + " " + process.version'], { env, encoding: 'utf8' }).trim();
    assert.match(version, /^arm64 v/);
    measured.arm64 = { node: version, installSeconds };
    for (const dispatch of ['primary', 'auto']) {
      const started = Date.now();
      const { dispatch: used } = await checkStickyApp(arm64, env, { node: [wrapper], dispatch, readyMs: 180_000 });
      assert.equal(used, 'primary', `dispatch '${dispatch}' under qemu`);
      measured.arm64[dispatch] = `${((Date.now() - started) / 1000).toFixed(1)} s`;
      console.log(
        `ok: arm64 under qemu (${version}), dispatch '${dispatch}' -> stats().dispatch 'primary': ${LIMITS.clients} clients sticky, exit 0 on SIGTERM`,
      );
    }
  }
  console.log(`measured: ${JSON.stringify(measured)}`);
}

if (require.main === module) {
  main()
    .then(() => fs.rmSync(work, { recursive: true, force: true }))
    .catch((err) => {
      console.error(err);
      console.error(`(projects kept in ${work})`);
      process.exitCode = 1;
    });
}

module.exports = { checkManifest, checkReadme };
