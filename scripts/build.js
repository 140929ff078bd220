'use strict';
// Builds the native addon with plain cargo (no @napi-rs/cli) and copies it to sticky_rs.node.
// A failure does not fail `npm install`: the reason is kept in build-error.txt and
// `require('sticky-rs')` throws it with what to run, so the whole install is not lost.
const { spawnSync } = require('node:child_process');
const fs = require('node:fs');
const path = require('node:path');

const root = path.resolve(__dirname, '..');
const addon = path.join(root, 'sticky_rs.node');
const errorFile = path.join(root, 'build-error.txt');
const targetDir = path.join(root, 'target');
const libName = { linux: 'libsticky_rs.so', darwin: 'libsticky_rs.dylib' }[process.platform];

function fail(reason) {
  fs.writeFileSync(errorFile, reason + '\n');
  console.warn(`\nsticky-rs: the native addon was not built.\n${reason}\n`);
  process.exit(process.env.STICKY_RS_STRICT_BUILD ? 1 : 0);
}

if (!libName) fail(`unsupported platform ${process.platform}: sticky-rs runs on Linux and macOS`);
fs.rmSync(errorFile, { force: true });
const cargo = process.env.CARGO || 'cargo';
const result = spawnSync(cargo, ['build', '--release', '--locked'], {
  cwd: root,
  stdio: 'inherit',
  env: { ...process.env, CARGO_TARGET_DIR: targetDir },
});
if (result.error && result.error.code === 'ENOENT') {
  fail(`cargo was not found. Install Rust (https://rustup.rs), then run \`npm rebuild sticky-rs\`.`);
}
if (result.status !== 0) {
  fail(`\`cargo build --release\` failed (exit ${result.status}); see the output above, then run \`npm rebuild sticky-rs\`.`);
}
// Copy then rename: overwriting the file in place could crash processes that have it loaded.
const staged = `${addon}.${process.pid}.tmp`;
fs.copyFileSync(path.join(targetDir, 'release', libName), staged);
fs.renameSync(staged, addon);
