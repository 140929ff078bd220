'use strict';
// The install script (`npm run build` too). When the prebuilt platform package loads, it does
// nothing. Otherwise (or with STICKY_RS_BUILD_FROM_SOURCE=1) it builds the addon from source with
// cargo into sticky_rs.node; if that is impossible it fails the install with what to do.
//
// Target directory: in a git checkout of this repository, ./target (incremental rebuilds, always
// built: the local build is what the loader prefers). In an installed package, a fresh directory
// under the OS temp dir, removed afterwards, so node_modules holds only the addon (not ~130 MB).
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { LOCAL_ADDON, PACKAGE, currentKey, loadPlatformPackage, notInstalledMessage } = require('../lib/platform');
const { buildAddon } = require('./cargo');

const root = path.resolve(__dirname, '..');
const checkout = fs.existsSync(path.join(root, '.git'));
const forced = process.env.STICKY_RS_BUILD_FROM_SOURCE === '1';
const key = currentKey();
const tried = [];

if (!checkout && !forced) {
  const prebuilt = loadPlatformPackage(key);
  if (prebuilt.addon) process.exit(0);
  tried.push(prebuilt.reason);
}

const targetDir = checkout ? path.join(root, 'target') : fs.mkdtempSync(path.join(os.tmpdir(), `${PACKAGE}-build-`));
if (!checkout) process.on('exit', () => fs.rmSync(targetDir, { recursive: true, force: true }));
// Ctrl-C reaches cargo too; exit through the cleanup instead of dying with the directory left behind.
for (const signal of ['SIGINT', 'SIGTERM']) process.on(signal, () => process.exit(1));

try {
  const why = checkout ? 'a git checkout' : forced ? 'STICKY_RS_BUILD_FROM_SOURCE=1' : tried[0];
  console.error(`${PACKAGE}: building the native addon from source (${why}) in ${checkout ? './target' : targetDir}`);
  const artifact = buildAddon({ targetDir });
  // Copy then rename: overwriting the file in place could crash processes that have it loaded.
  const staged = `${LOCAL_ADDON}.${process.pid}.tmp`;
  fs.copyFileSync(artifact, staged);
  fs.renameSync(staged, LOCAL_ADDON);
  require(LOCAL_ADDON);
} catch (err) {
  tried.push(`building from source: ${err.message.split('\n')[0]}`);
  console.error(`\n${notInstalledMessage(key, tried)}\n`);
  process.exit(1);
}
