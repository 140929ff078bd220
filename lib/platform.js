'use strict';
// Which prebuilt package fits this machine, how to load it, and what to tell the user when
// nothing loads. Shared by the loader (lib/binding.js), the install script (scripts/build.js)
// and the packer (scripts/pack-dist.js), so the three agree on names.
const fs = require('node:fs');
const path = require('node:path');

const root = path.resolve(__dirname, '..');
const { name: PACKAGE, version: VERSION } = require('../package.json');

/** The addon built from source, at the package root (development and the install fallback). */
const LOCAL_ADDON = path.join(root, 'sticky_rs.node');

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
  try {
    return { addon: require(path.join(path.dirname(manifest), addonFile(key))) };
  } catch (err) {
    return { reason: `${name} did not load: ${err.message.split('\n')[0]}` };
  }
}

/**
 * The one error text for "no native addon": the platform, what was tried (`tried`: lines), and
 * the fixes for each package manager. Used by the loader and by the install script.
 */
function notInstalledMessage(key, tried) {
  const prebuilt = PLATFORMS.some((p) => p.key === key);
  const lines = [
    `${PACKAGE}: no native addon for ${key} (Node ${process.version}).`,
    'Tried:',
    ...tried.map((t) => `  - ${t}`),
    'Fix:',
  ];
  if (prebuilt) {
    lines.push(
      `  The prebuilt addon is the optional dependency ${packageName(key)}@${VERSION}; install it:`,
      '  - npm: do not pass --omit=optional / --no-optional. A package-lock.json written on another',
      '    OS or CPU can lack it (npm/cli#4828): `rm -rf node_modules package-lock.json && npm install`.',
      '  - pnpm, yarn, bun: do not ignore optional dependencies; yarn 2+ installs only the',
      '    `supportedArchitectures` of .yarnrc.yml (this machine by default).',
      '  Or build from source:',
    );
  } else {
    lines.push('  Build from source:');
  }
  lines.push(
    `  - install Rust (https://rustup.rs: cargo and a C linker, \`cc\`), then run the install script of ${PACKAGE} again:`,
    `  - npm: \`npm rebuild ${PACKAGE}\`; if npm says its install script is not allowed:`,
    `    \`npm install-scripts approve ${PACKAGE}\``,
    `  - pnpm 10 runs no install scripts of dependencies unless allowed: \`pnpm approve-builds\`, or add`,
    `    "${PACKAGE}" to onlyBuiltDependencies (pnpm-workspace.yaml), then \`pnpm rebuild ${PACKAGE}\``,
    `  - yarn: \`yarn rebuild ${PACKAGE}\` (yarn 2+; not with dependenciesMeta built: false), \`yarn install --force\` (yarn 1)`,
    `  - bun runs scripts only of trusted dependencies: \`bun pm trust ${PACKAGE}\``,
  );
  return lines.join('\n');
}

module.exports = {
  PACKAGE,
  VERSION,
  PLATFORMS,
  LOCAL_ADDON,
  packageName,
  addonFile,
  currentKey,
  loadPlatformPackage,
  notInstalledMessage,
};
