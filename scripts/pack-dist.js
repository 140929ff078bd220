'use strict';
// `npm run pack:dist`: writes the tarballs to publish into dist/.
//
//   node scripts/pack-dist.js                         the six platform packages, then the main package
//   node scripts/pack-dist.js --platform darwin-arm64 only dist/sticky-rs-darwin-arm64-<version>.tgz
//   node scripts/pack-dist.js --main                  only dist/sticky-rs-<version>.tgz, from the six
//                                                     platform tarballs already in dist/
//
// Every addon is cross-built on this machine (Linux x64) with cargo-zigbuild: linux-gnu against
// glibc 2.17 symbol versions, linux-musl as a dynamic library (no static CRT, which Node could not
// load), darwin with MACOSX_DEPLOYMENT_TARGET (else zig marks the dylib macOS 15+ only). Before
// building, it provisions what it needs (rustup targets, zig from PyPI, cargo-zigbuild) or stops
// with one line naming what is missing.
//
// The main package is `npm pack` of this directory, then: `optionalDependencies` on every platform
// package at this exact version (added here, like `napi prepublish`, so that the repository's own
// `npm ci` does not need packages that are not published yet); lib/addons.sha256.json, the sha256
// of each platform package's addon (the loader refuses any other file: a package of that name
// from elsewhere proves nothing); no install script and no script whose file is not shipped.
const { execFileSync, spawnSync } = require('node:child_process');
const crypto = require('node:crypto');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { PACKAGE, VERSION, PLATFORMS, ADDON_HASHES, packageName, addonFile } = require('../lib/platform');
const { buildAddon } = require('./cargo');

/** Oldest glibc the linux-gnu addons support (cargo-zigbuild target suffix). */
const GLIBC = '2.17';
/** Oldest macOS the darwin addons support, per CPU (Apple silicon starts at 11). */
const MACOS = { arm64: '11.0', x64: '10.15' };
const CARGO_ZIGBUILD = 'cargo-zigbuild@0.24.1';

const root = path.resolve(__dirname, '..');
const dist = path.join(root, 'dist');
const { license, engines, repository, homepage, bugs } = require('../package.json');

const platformOf = (key) => {
  const platform = PLATFORMS.find((p) => p.key === key);
  if (!platform) fail(`unknown platform ${key}; known: ${PLATFORMS.map((p) => p.key).join(', ')}`);
  return platform;
};
const tarballOf = (key) => path.join(dist, `${packageName(key)}-${VERSION}.tgz`);

/** Stops with one line (the provisioning contract: say what is missing, nothing else). */
function fail(line) {
  console.error(`pack:dist: ${line}`);
  process.exit(1);
}

function run(cmd, args, opts = {}) {
  return spawnSync(cmd, args, { encoding: 'utf8', timeout: 600_000, ...opts });
}
const works = (cmd, args) => run(cmd, args).status === 0;

/** rustup targets, zig and cargo-zigbuild for `platforms`; installs what is missing. */
function provision(platforms) {
  const cargo = process.env.CARGO || 'cargo';
  if (!works(cargo, ['--version'])) fail('cargo is not on PATH: install Rust (https://rustup.rs)');
  const targets = platforms.map((p) => p.rustTarget);
  const haveStd = (t) => {
    const r = run('rustc', ['--print', 'target-libdir', '--target', t]);
    return r.status === 0 && fs.existsSync(r.stdout.trim()) && fs.readdirSync(r.stdout.trim()).some((f) => f.startsWith('libstd-'));
  };
  const missing = targets.filter((t) => !haveStd(t));
  if (missing.length) {
    const r = works('rustup', ['--version']) ? run('rustup', ['target', 'add', ...missing], { stdio: ['ignore', 'ignore', 'pipe'] }) : null;
    const still = missing.filter((t) => !haveStd(t));
    if (still.length) {
      const why = r ? (r.stderr || '').trim().split('\n').pop() : 'rustup is not on PATH';
      fail(
        `Rust's std is missing for ${still.join(', ')} (\`rustup target add\`: ${why}); without rustup's server, ` +
          'Debian: `apt-get install rustc-web libstd-rust-web-dev:arm64` (+ rust-web-src and RUSTC_BOOTSTRAP=1 -Zbuild-std for musl)',
      );
    }
  }
  const zig = () => works('zig', ['version']) || works('python3', ['-m', 'ziglang', 'version']);
  if (!zig()) {
    console.error('pack:dist: installing zig (python3 -m pip install ziglang)');
    if (!works('python3', ['-m', 'pip', 'install', '--quiet', 'ziglang'])) {
      run('python3', ['-m', 'pip', 'install', '--quiet', '--break-system-packages', 'ziglang']);
    }
    if (!zig()) fail('zig is missing and `python3 -m pip install ziglang` did not provide it (needs python3 with pip)');
  }
  if (!works(cargo, ['zigbuild', '--help'])) {
    console.error(`pack:dist: installing ${CARGO_ZIGBUILD} (cargo install, ~2 min)`);
    const r = run(cargo, ['install', '--locked', '--quiet', CARGO_ZIGBUILD], { stdio: ['ignore', 'inherit', 'inherit'], timeout: 900_000 });
    if (r.status !== 0 || !works(cargo, ['zigbuild', '--help']))
      fail(`cargo-zigbuild is missing and \`cargo install --locked ${CARGO_ZIGBUILD}\` failed`);
  }
}

function npmPack(dir, into) {
  const [info] = JSON.parse(execFileSync('npm', ['pack', dir, '--json', '--pack-destination', into], { encoding: 'utf8' }));
  return path.join(into, info.filename);
}

/** Builds the addon for `platform` (see PLATFORMS in lib/platform.js) and returns its path. */
function build(platform) {
  const targetDir = path.join(root, 'target');
  const suffix = platform.libc === 'glibc' ? `.${GLIBC}` : '';
  const env = {};
  if (platform.libc === 'musl') env.RUSTFLAGS = `${process.env.RUSTFLAGS ?? ''} -C target-feature=-crt-static`.trim();
  if (platform.os === 'darwin') env.MACOSX_DEPLOYMENT_TARGET = MACOS[platform.cpu];
  return buildAddon({ targetDir, command: ['zigbuild'], target: platform.rustTarget + suffix, env });
}

function packPlatform(key, work) {
  const platform = platformOf(key);
  const started = Date.now();
  const dir = path.join(work, key);
  fs.mkdirSync(dir);
  fs.copyFileSync(build(platform), path.join(dir, addonFile(key)));
  fs.copyFileSync(path.join(root, 'LICENSE'), path.join(dir, 'LICENSE'));
  fs.writeFileSync(
    path.join(dir, 'README.md'),
    `# ${packageName(key)}\n\nThe ${key} native addon of [${PACKAGE}](${homepage}). ` +
      `Install \`${PACKAGE}\`, not this package: it is an optional dependency of it.\n`,
  );
  const manifest = {
    name: packageName(key),
    version: VERSION,
    description: `The ${key} native addon of ${PACKAGE}`,
    main: addonFile(key),
    files: [addonFile(key)],
    license,
    engines,
    os: [platform.os],
    cpu: [platform.cpu],
    ...(platform.libc && { libc: [platform.libc] }),
    repository,
    homepage,
    bugs,
  };
  fs.writeFileSync(path.join(dir, 'package.json'), `${JSON.stringify(manifest, null, 2)}\n`);
  const tarball = npmPack(dir, dist);
  console.error(`pack:dist: ${key} built and packed in ${((Date.now() - started) / 1000).toFixed(0)} s`);
  return tarball;
}

/** sha256 (hex) of each platform package's addon, read from its tarball in dist/. */
function addonHashes(work) {
  const hashes = {};
  for (const { key } of PLATFORMS) {
    const tarball = tarballOf(key);
    if (!fs.existsSync(tarball))
      fail(`${path.relative(root, tarball)} is missing: the main package records every addon's sha256 (run without --main)`);
    const dir = fs.mkdtempSync(path.join(work, `hash-${key}-`));
    execFileSync('tar', ['-xzf', tarball, '-C', dir]);
    const file = path.join(dir, 'package', addonFile(key));
    hashes[key] = crypto.createHash('sha256').update(fs.readFileSync(file)).digest('hex');
  }
  return hashes;
}

/** Scripts of the published manifest: only `node <file>` commands whose files are shipped; no install hooks. */
function publishedScripts(scripts, dir) {
  const kept = {};
  for (const [name, command] of Object.entries(scripts ?? {})) {
    if (/^(pre|post)?install$|^prepublishOnly$|^prepare$/.test(name)) continue;
    const m = /^node ([\w./-]+\.m?js)$/.exec(command);
    if (m && fs.existsSync(path.join(dir, m[1]))) kept[name] = command;
  }
  return kept;
}

function packMain(work) {
  const hashes = addonHashes(work);
  const plain = npmPack(root, work);
  execFileSync('tar', ['-xzf', plain, '-C', work]);
  const dir = path.join(work, 'package');
  const file = path.join(dir, 'package.json');
  const manifest = JSON.parse(fs.readFileSync(file, 'utf8'));
  manifest.optionalDependencies = Object.fromEntries(PLATFORMS.map((p) => [packageName(p.key), VERSION]));
  manifest.scripts = publishedScripts(manifest.scripts, dir);
  delete manifest.devDependencies; // not installed for users; it named tools only the repository has
  fs.writeFileSync(file, `${JSON.stringify(manifest, null, 2)}\n`);
  fs.writeFileSync(path.join(dir, path.relative(root, ADDON_HASHES)), `${JSON.stringify(hashes, null, 2)}\n`);
  return npmPack(dir, dist);
}

function main(argv) {
  const platformAt = argv.indexOf('--platform');
  const only = platformAt >= 0 ? argv[platformAt + 1] : undefined;
  const wantMain = argv.includes('--main');
  const keys = wantMain ? [] : only ? [platformOf(only).key] : PLATFORMS.map((p) => p.key);
  if (keys.length) provision(keys.map(platformOf));
  fs.mkdirSync(dist, { recursive: true });
  const work = fs.mkdtempSync(path.join(os.tmpdir(), `${PACKAGE}-pack-`));
  try {
    const written = keys.map((key) => packPlatform(key, work));
    if (wantMain || !only) written.push(packMain(work));
    for (const f of written) console.log(`${path.relative(root, f)} (${fs.statSync(f).size} bytes)`);
  } finally {
    fs.rmSync(work, { recursive: true, force: true });
  }
}

main(process.argv.slice(2));
