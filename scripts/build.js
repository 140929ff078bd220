#!/usr/bin/env node
'use strict';
// Builds the addon from source with cargo into sticky_rs.node, which the loader prefers to the
// prebuilt platform package. In a git checkout it is the repository's `install` script (and
// `npm run build`); the published package has no install script (pack:dist removes it), so there
// it runs only when asked: `npx sticky-rs-build` (the package's bin) in the user's project.
// If the build is impossible it exits 1 with what to do.
//
// Target directory: in a git checkout of this repository, ./target (incremental rebuilds). In an
// installed package, a fresh directory under the OS temp dir, removed afterwards, so
// node_modules holds only the addon (not ~130 MB).
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { LOCAL_ADDON, PACKAGE, currentKey, notInstalledMessage } = require('../lib/platform');
const { buildAddon } = require('./cargo');

const root = path.resolve(__dirname, '..');
const checkout = fs.existsSync(path.join(root, '.git'));
const targetDir = checkout ? path.join(root, 'target') : fs.mkdtempSync(path.join(os.tmpdir(), `${PACKAGE}-build-`));
if (!checkout) process.on('exit', () => fs.rmSync(targetDir, { recursive: true, force: true }));
// Ctrl-C reaches cargo too; exit through the cleanup instead of dying with the directory left behind.
for (const signal of ['SIGINT', 'SIGTERM']) process.on(signal, () => process.exit(1));

try {
  console.error(`${PACKAGE}: building the native addon from source in ${checkout ? './target' : targetDir}`);
  const artifact = buildAddon({ targetDir });
  // Copy then rename: overwriting the file in place could crash processes that have it loaded.
  const staged = `${LOCAL_ADDON}.${process.pid}.tmp`;
  fs.copyFileSync(artifact, staged);
  fs.renameSync(staged, LOCAL_ADDON);
  require(LOCAL_ADDON);
  console.error(`${PACKAGE}: built ${path.relative(process.cwd(), LOCAL_ADDON) || LOCAL_ADDON}`);
} catch (err) {
  console.error(`\n${notInstalledMessage(currentKey(), [`building from source: ${err.message.split('\n')[0]}`])}\n`);
  process.exit(1);
}
