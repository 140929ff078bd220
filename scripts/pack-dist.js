'use strict';
// `npm run pack:dist`: writes the tarballs to publish into dist/.
//
//   node scripts/pack-dist.js                         the main package and linux-x64-gnu (what this machine builds)
//   node scripts/pack-dist.js --main                  only dist/sticky-rs-<version>.tgz
//   node scripts/pack-dist.js --platform darwin-arm64 only dist/sticky-rs-darwin-arm64-<version>.tgz (on that OS)
//
// The main package is `npm pack` of this directory plus `optionalDependencies` on every platform
// package at this exact version (added here, like `napi prepublish`, so that the repository's
// own `npm ci` does not need packages that are not published yet). A platform package holds only
// its `.node` file. Linux addons are built with cargo-zigbuild: gnu against glibc 2.17 symbol
// versions, musl as a dynamic library (no static CRT, which Node could not load).
const { execFileSync } = require('node:child_process');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { PACKAGE, VERSION, PLATFORMS, packageName, addonFile } = require('../lib/platform');
const { buildAddon } = require('./cargo');

/** Oldest glibc the linux-gnu addons support (cargo-zigbuild target suffix). */
const GLIBC = '2.17';

const root = path.resolve(__dirname, '..');
const dist = path.join(root, 'dist');
const { license, engines, repository } = require('../package.json');

function npmPack(dir, into) {
  const [info] = JSON.parse(execFileSync('npm', ['pack', dir, '--json', '--pack-destination', into], { encoding: 'utf8' }));
  return path.join(into, info.filename);
}

/** Builds the addon for `platform` (see PLATFORMS in lib/platform.js) and returns its path. */
function build(platform) {
  const targetDir = path.join(root, 'target');
  if (platform.os === 'darwin') return buildAddon({ targetDir, target: platform.rustTarget });
  const glibc = platform.libc === 'glibc' ? `.${GLIBC}` : '';
  const env = platform.libc === 'musl' ? { RUSTFLAGS: `${process.env.RUSTFLAGS ?? ''} -C target-feature=-crt-static`.trim() } : {};
  try {
    return buildAddon({ targetDir, command: ['zigbuild'], target: platform.rustTarget + glibc, env });
  } catch (err) {
    err.message += ' (needs zig, `pip install ziglang`, and `cargo install --locked cargo-zigbuild`)';
    throw err;
  }
}

function packPlatform(key, work) {
  const platform = PLATFORMS.find((p) => p.key === key);
  if (!platform) throw new Error(`unknown platform ${key}; known: ${PLATFORMS.map((p) => p.key).join(', ')}`);
  const dir = path.join(work, key);
  fs.mkdirSync(dir);
  fs.copyFileSync(build(platform), path.join(dir, addonFile(key)));
  fs.copyFileSync(path.join(root, 'LICENSE'), path.join(dir, 'LICENSE'));
  fs.writeFileSync(
    path.join(dir, 'README.md'),
    `# ${packageName(key)}\n\nThe ${key} native addon of [${PACKAGE}](https://www.npmjs.com/package/${PACKAGE}). ` +
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
    ...(repository && { repository }),
  };
  fs.writeFileSync(path.join(dir, 'package.json'), JSON.stringify(manifest, null, 2) + '\n');
  return npmPack(dir, dist);
}

function packMain(work) {
  const plain = npmPack(root, work);
  execFileSync('tar', ['-xzf', plain, '-C', work]);
  const dir = path.join(work, 'package');
  const file = path.join(dir, 'package.json');
  const manifest = JSON.parse(fs.readFileSync(file, 'utf8'));
  manifest.optionalDependencies = Object.fromEntries(PLATFORMS.map((p) => [packageName(p.key), VERSION]));
  delete manifest.scripts.prepublishOnly; // it refuses to publish the repository directory itself
  fs.writeFileSync(file, JSON.stringify(manifest, null, 2) + '\n');
  return npmPack(dir, dist);
}

function main(argv) {
  const platformAt = argv.indexOf('--platform');
  const platform = platformAt >= 0 ? argv[platformAt + 1] : undefined;
  const wantMain = argv.includes('--main');
  fs.mkdirSync(dist, { recursive: true });
  const work = fs.mkdtempSync(path.join(os.tmpdir(), `${PACKAGE}-pack-`));
  try {
    const written = [];
    if (wantMain || !platform) written.push(packMain(work));
    if (platform || !wantMain) written.push(packPlatform(platform ?? 'linux-x64-gnu', work));
    for (const file of written) console.log(`${path.relative(root, file)} (${fs.statSync(file).size} bytes)`);
  } finally {
    fs.rmSync(work, { recursive: true, force: true });
  }
}

main(process.argv.slice(2));
