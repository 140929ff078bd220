'use strict';
// Which prebuilt package fits this machine, how to load it, and what to tell the user when
// nothing loads. Shared by the loader (lib/binding.js), the source build (scripts/build.js)
// and the packer (scripts/pack-dist.js), so the three agree on names.
const crypto = require('node:crypto');
const fs = require('node:fs');
const path = require('node:path');

const root = path.resolve(__dirname, '..');
const { name: PACKAGE, version: VERSION } = require('../package.json');

/** The addon built from source, at the package root (development and the install fallback). */
const LOCAL_ADDON = path.join(root, 'sticky_rs.node');

/**
 * `{ <key>: <sha256 hex of the addon> }`, written into the main package by `npm run pack:dist`.
 * A platform package loads only if its addon has that hash: anyone could publish a package of
 * that name (until ours are published, npm fetches whatever holds it), and a version says nothing.
 * Absent in a git checkout, where platform packages are not installed and nothing is loaded from them.
 */
const ADDON_HASHES = path.join(__dirname, 'addons.sha256.json');

/**
 * Every platform package: `sticky-rs-<key>`, holding only `sticky-rs.<key>.node`. `os`, `cpu` and
 * `libc` are npm's fields (npm, pnpm, yarn and bun install only the package that matches).
 */
const PLATFORMS = [
  { key: 'linux-x64-gnu', os: 'linux', cpu: 'x64', libc: 'glibc', rustTarget: 'x86_64-unknown-linux-gnu' },
  { key: 'linux-arm64-gnu', os: 'linux', cpu: 'arm64', libc: 'glibc', rustTarget: 'aarch64-unknown-linux-gnu' },
  { key: 'linux-x64-musl', os: 'linux', cpu: 'x64', libc: 'musl', rustTarget: 'x86_64-unknown-linux-musl' },
  { key: 'linux-arm64-musl', os: 'linux', cpu: 'arm64', libc: 'musl', rustTarget: 'aarch64-unknown-linux-musl' },
  { key: 'darwin-x64', os: 'darwin', cpu: 'x64', rustTarget: 'x86_64-apple-darwin' },
  { key: 'darwin-arm64', os: 'darwin', cpu: 'arm64', rustTarget: 'aarch64-apple-darwin' },
];

/** The package's `bin` that builds the addon from source (scripts/build.js; there is no install script). */
const BUILD_COMMAND = `${PACKAGE}-build`;

/** npm name of the platform package for `key`. */
const packageName = (key) => `${PACKAGE}-${key}`;
/** File name of the addon inside that package (its `main`). */
const addonFile = (key) => `${PACKAGE}.${key}.node`;

function isMusl() {
  // Alpine's ldd is musl's loader; glibc's is a script. Images without ldd: ask Node.
  try {
    return fs.readFileSync('/usr/bin/ldd', 'latin1').includes('musl');
  } catch {}
  const header = process.report?.getReport?.().header;
  return Boolean(header) && !header.glibcVersionRuntime;
}

/** This machine as a platform key (`linux-x64-gnu`, `darwin-arm64`, ...), published or not. */
function currentKey() {
  const libc = process.platform === 'linux' ? (isMusl() ? '-musl' : '-gnu') : '';
  return `${process.platform}-${process.arch}${libc}`;
}

/**
 * Loads the platform package. Returns `{ addon }`, or `{ reason }` (one line: why it did not load).
 */
function loadPlatformPackage(key = currentKey()) {
  if (!PLATFORMS.some((p) => p.key === key)) return { reason: `no prebuilt package is published for ${key}` };
  const name = packageName(key);
  let manifest;
  try {
    manifest = require.resolve(`${name}/package.json`, { paths: [root] });
  } catch {
    return { reason: `${name} is not installed` };
  }
  const { version } = JSON.parse(fs.readFileSync(manifest, 'utf8'));
  if (version !== VERSION) return { reason: `${name} is version ${version}, ${PACKAGE} needs ${VERSION}` };
  const file = path.join(path.dirname(manifest), addonFile(key));
  let expected;
  try {
    expected = JSON.parse(fs.readFileSync(ADDON_HASHES, 'utf8'))[key];
  } catch {}
  if (!expected) return { reason: `${name} is installed, but ${PACKAGE} records no sha256 for it (a git checkout?): not loaded` };
  let actual;
  try {
    actual = crypto.createHash('sha256').update(fs.readFileSync(file)).digest('hex');
  } catch (err) {
    return { reason: `${name} has no readable ${addonFile(key)}: ${err.code ?? err.message}` };
  }
  if (actual !== expected) {
    return {
      reason: `${name}'s addon is not the one released with ${PACKAGE}@${VERSION} (sha256 ${actual.slice(0, 16)}…, expected ${expected.slice(0, 16)}…): refused`,
    };
  }
  try {
    return { addon: require(file) };
  } catch (err) {
    return { reason: `${name} did not load: ${err.message.split('\n')[0]}` };
  }
}

/**
 * The one error text for "no native addon": the platform, the fix first (install the platform
 * package, or build from source), then what was tried (`tried`: lines). Used by the loader and
 * by the source build (scripts/build.js).
 */
function notInstalledMessage(key, tried) {
  const prebuilt = PLATFORMS.some((p) => p.key === key);
  const lines = [`${PACKAGE}: no native addon for ${key} (Node ${process.version}).`, 'Fix:'];
  if (prebuilt) {
    lines.push(
      `  Install the platform package next to ${PACKAGE}, at the same version:`,
      `    npm install ./${packageName(key)}-${VERSION}.tgz   (the tarball \`npm run pack:dist\` writes to dist/,`,
      `    until ${PACKAGE} is published; then \`npm install ${packageName(key)}@${VERSION}\`)`,
      '  It is an optional dependency: npm skips it with --omit=optional / --no-optional, and a',
      '  package-lock.json written on another OS or CPU can lack it (npm/cli#4828):',
      '  `rm -rf node_modules package-lock.json && npm install`. yarn 2+ installs only the',
      '  `supportedArchitectures` of .yarnrc.yml (this machine by default).',
      '  Or build from source:',
    );
  } else {
    lines.push('  Build from source:');
  }
  lines.push(
    `  - install Rust (https://rustup.rs: cargo and a C linker, \`cc\`), then, in your project:`,
    `    \`npx ${BUILD_COMMAND}\` (pnpm: \`pnpm exec ${BUILD_COMMAND}\`, yarn: \`yarn ${BUILD_COMMAND}\`, bun: \`bunx ${BUILD_COMMAND}\`);`,
    `    it writes sticky_rs.node into the installed ${PACKAGE}, which loads it first`,
    'Tried:',
    ...tried.map((t) => `  - ${t}`),
  );
  return lines.join('\n');
}

module.exports = {
  PACKAGE,
  VERSION,
  PLATFORMS,
  LOCAL_ADDON,
  ADDON_HASHES,
  BUILD_COMMAND,
  packageName,
  addonFile,
  currentKey,
  loadPlatformPackage,
  notInstalledMessage,
};
