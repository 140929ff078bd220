'use strict';
// Builds the napi crate with cargo and says where the addon landed. Used by the install script
// (scripts/build.js) and the packer (scripts/pack-dist.js).
const { spawnSync } = require('node:child_process');
const path = require('node:path');

const root = path.resolve(__dirname, '..');

/** The napi crate, relative to the package root: the one line to change when the crate moves. */
const CRATE_MANIFEST = 'node/Cargo.toml';

/**
 * Runs `cargo <command> --release --locked` on the napi crate and returns the path of the cdylib
 * it produced (read from cargo's JSON messages, so no file name is guessed). Diagnostics go to
 * stderr. Throws an Error with `code` 'ENOENT' when `cargo` is not on PATH.
 *
 * @param {object} o
 * @param {string} o.targetDir  CARGO_TARGET_DIR
 * @param {string[]} [o.command]  `['build']` (default) or e.g. `['zigbuild']`
 * @param {string} [o.target]  Rust target (`--target`), default the host
 * @param {object} [o.env]  extra environment
 */
function buildAddon({ targetDir, command = ['build'], target, env = {} }) {
  const manifest = path.join(root, CRATE_MANIFEST);
  const args = [...command, '--release', '--locked', '--manifest-path', manifest, '--message-format=json-render-diagnostics'];
  if (target) args.push('--target', target);
  const cargo = process.env.CARGO || 'cargo';
  const result = spawnSync(cargo, args, {
    cwd: root,
    stdio: ['ignore', 'pipe', 'inherit'],
    encoding: 'utf8',
    maxBuffer: 256 * 1024 * 1024,
    env: { ...process.env, ...env, CARGO_TARGET_DIR: targetDir },
  });
  if (result.error) {
    const err = new Error(
      result.error.code === 'ENOENT' ? `${cargo} was not found on PATH` : `${cargo} did not run: ${result.error.message}`,
    );
    err.code = result.error.code;
    throw err;
  }
  if (result.status !== 0) {
    throw new Error(`\`${cargo} ${command.join(' ')} --release\` failed (exit ${result.status ?? result.signal}); its output is above`);
  }
  let artifact;
  for (const line of result.stdout.split('\n')) {
    if (!line.startsWith('{')) continue;
    const msg = JSON.parse(line);
    if (msg.reason !== 'compiler-artifact' || path.resolve(msg.manifest_path) !== manifest) continue;
    if (!msg.target.kind.includes('cdylib')) continue;
    artifact = msg.filenames.find((f) => /\.(so|dylib)$/.test(f)) ?? artifact;
  }
  if (!artifact) throw new Error(`cargo reported no cdylib for ${CRATE_MANIFEST}`);
  return artifact;
}

module.exports = { CRATE_MANIFEST, buildAddon };
