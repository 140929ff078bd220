'use strict';
// Static checks of the six platform addons in dist/ (what can be proven without running them):
//   gnu:    ELF machine, at most GLIBC_2.17, NEEDED only glibc's own libraries
//   musl:   ELF machine, NEEDED only libc.so, every undefined symbol is napi_*/uv_* or exported
//           by musl 1.2 (Debian's `musl` package); x64 also resolved by musl's own loader
//           (`ld-musl-x86_64.so.1 --list`: only napi_*/uv_* may be missing)
//   darwin: Mach-O 64 of the right CPU, minimum macOS 11.0 (arm64) / 10.15 (x64), a code
//           signature on arm64 (Apple silicon loads no unsigned code), links only libSystem,
//           libiconv and libcharset (part of every macOS), napi_* left to Node
// Used by scripts/check-dist.js; `node scripts/check-addons.js` runs them alone.
const assert = require('node:assert/strict');
const { execFileSync, spawnSync } = require('node:child_process');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { PACKAGE, VERSION, PLATFORMS, packageName, addonFile } = require('../lib/platform');
const { maxGlibc, compareVersions } = require('./glibc');

const root = path.resolve(__dirname, '..');
const GLIBC = '2.17';
const MACOS = { arm64: '11.0', x64: '10.15' };
const ELF_MACHINE = { x64: 62, arm64: 183 };
const MACHO_CPU = { x64: 0x01000007, arm64: 0x0100000c };
const GLIBC_LIBS = new Set([
  'libc.so.6',
  'libpthread.so.0',
  'libdl.so.2',
  'libm.so.6',
  'librt.so.1',
  'libgcc_s.so.1',
  'ld-linux-x86-64.so.2',
  'ld-linux-aarch64.so.1',
]);
const MUSL_LIBC = ['/usr/lib/x86_64-linux-musl/libc.so', '/usr/lib/musl/lib/libc.so'];
const MUSL_LOADER = '/lib/ld-musl-x86_64.so.1';
const nodeApi = (s) => /^(napi_|uv_|node_api_)/.test(s);

const readelf = (args, file) => execFileSync('readelf', ['-W', ...args, file], { encoding: 'utf8', maxBuffer: 64 << 20 });
const needed = (file) => [...readelf(['-d'], file).matchAll(/\(NEEDED\)\s+Shared library: \[([^\]]+)\]/g)].map((m) => m[1]);
/**
 * Undefined dynamic symbols, without version suffixes: `required` (GLOBAL: the load fails without
 * them) and `weak` (resolved to null when absent, e.g. std's __cxa_thread_atexit_impl probe).
 */
function undefinedSymbols(file) {
  const rows = readelf(['--dyn-syms'], file)
    .split('\n')
    .map((l) => l.trim().split(/\s+/))
    .filter((f) => f.length >= 8 && f[6] === 'UND' && f[7]);
  const names = (bind) => rows.filter((f) => (f[4] === 'WEAK') === bind).map((f) => f[7].replace(/@.*$/, ''));
  return { required: names(false), weak: names(true) };
}
function definedSymbols(file) {
  return new Set(
    readelf(['--dyn-syms'], file)
      .split('\n')
      .map((l) => l.trim().split(/\s+/))
      .filter((f) => f.length >= 8 && /^\d+$/.test(f[6]))
      .map((f) => f[7].replace(/@.*$/, '')),
  );
}

function checkElf(file, platform, notes) {
  const head = fs.readFileSync(file).subarray(0, 20);
  assert.equal(head.toString('latin1', 0, 4), '\x7fELF', `${file} is not ELF`);
  assert.equal(head.readUInt16LE(18), ELF_MACHINE[platform.cpu], `${file}: ELF machine ${head.readUInt16LE(18)}, not ${platform.cpu}`);
  const libs = needed(file);
  if (platform.libc === 'glibc') {
    notes.glibc = maxGlibc(file);
    assert.ok(compareVersions(notes.glibc, GLIBC) <= 0, `${file} needs GLIBC_${notes.glibc}`);
    for (const lib of libs) assert.ok(GLIBC_LIBS.has(lib), `${file} needs ${lib}`);
    return;
  }
  assert.deepEqual(libs, ['libc.so'], `${file} NEEDED ${libs}`);
  const musl = MUSL_LIBC.find((f) => fs.existsSync(f));
  assert.ok(musl, `musl's libc.so is not installed (${MUSL_LIBC.join(' or ')}): apt-get install musl`);
  const exported = definedSymbols(musl);
  const { required, weak } = undefinedSymbols(file);
  const unknown = required.filter((s) => !nodeApi(s) && !exported.has(s));
  assert.deepEqual(unknown, [], `${file} needs symbols musl 1.2 does not export`);
  notes.undefined = `${required.length} (${required.filter(nodeApi).length} napi/uv, the rest in musl)`;
  notes.weakNotInMusl = weak.filter((s) => !exported.has(s)).join(' ') || 'none';
  if (platform.cpu === 'x64' && fs.existsSync(MUSL_LOADER)) {
    // musl's loader as ldd: relocates the addon against musl; only Node's symbols may be missing.
    const r = spawnSync(MUSL_LOADER, ['--list', file], { encoding: 'utf8', timeout: 30_000 });
    const missing = [...`${r.stdout}${r.stderr}`.matchAll(/Error relocating [^:]+: ([^:]+): symbol not found/g)].map((m) => m[1]);
    const other = `${r.stdout}${r.stderr}`.split('\n').filter((l) => /rror/.test(l) && !/symbol not found/.test(l));
    assert.deepEqual(other, [], `musl's loader: ${other.join('\n')}`);
    assert.deepEqual(
      missing.filter((s) => !nodeApi(s)),
      [],
      `musl's loader cannot resolve these`,
    );
    notes.muslLoader = `resolved by ${MUSL_LOADER} except ${missing.length} napi/uv symbols`;
  } else if (platform.cpu === 'x64') {
    notes.muslLoader = `not run: ${MUSL_LOADER} is not installed`;
  }
}

/** Mach-O 64: header, load commands, undefined symbols. */
function checkMachO(file, platform, notes) {
  const b = fs.readFileSync(file);
  assert.equal(b.readUInt32LE(0), 0xfeedfacf, `${file} is not a 64-bit Mach-O`);
  assert.equal(b.readUInt32LE(4), MACHO_CPU[platform.cpu], `${file}: CPU type ${b.readUInt32LE(4).toString(16)}`);
  assert.equal(b.readUInt32LE(12), 6, `${file} is not a dylib (MH_DYLIB)`);
  const ncmds = b.readUInt32LE(16);
  let at = 32;
  const dylibs = [];
  let minos = null;
  let signed = false;
  let symtab = null;
  for (let i = 0; i < ncmds; i++) {
    const cmd = b.readUInt32LE(at);
    const size = b.readUInt32LE(at + 4);
    if (cmd === 0x32) {
      const v = b.readUInt32LE(at + 12); // LC_BUILD_VERSION: platform, minos (xxxx.yy.zz)
      minos = `${v >>> 16}.${(v >> 8) & 0xff}`;
    } else if (cmd === 0x24) {
      const v = b.readUInt32LE(at + 8); // LC_VERSION_MIN_MACOSX
      minos = `${v >>> 16}.${(v >> 8) & 0xff}`;
    } else if (cmd === 0x1d)
      signed = true; // LC_CODE_SIGNATURE
    else if (cmd === 0xc || cmd === 0x80000018)
      dylibs.push(b.toString('latin1', at + b.readUInt32LE(at + 8), at + size).replace(/\0.*$/s, ''));
    else if (cmd === 0x2) symtab = { symoff: b.readUInt32LE(at + 8), nsyms: b.readUInt32LE(at + 12), stroff: b.readUInt32LE(at + 16) };
    at += size;
  }
  assert.ok(minos, `${file} has no minimum macOS version`);
  assert.ok(compareVersions(minos, MACOS[platform.cpu]) <= 0, `${file} needs macOS ${minos}, above ${MACOS[platform.cpu]}`);
  // Apple silicon runs no unsigned code (an ad-hoc signature will do); Intel Macs need none.
  if (platform.cpu === 'arm64') assert.ok(signed, `${file} has no code signature (Apple silicon refuses unsigned code)`);
  assert.deepEqual(
    dylibs.filter((d) => !/^\/usr\/lib\/lib(System\.B|iconv\.2|charset\.1)\.dylib$/.test(d)),
    [],
    `${file} links ${dylibs}`,
  );
  assert.ok(symtab, `${file} has no symbol table`);
  const undef = [];
  for (let i = 0; i < symtab.nsyms; i++) {
    const e = symtab.symoff + i * 16;
    const type = b[e + 4];
    if ((type & 0xe0) === 0 && (type & 0x0e) === 0 && type & 0x01) {
      undef.push(
        b
          .toString('latin1', symtab.stroff + b.readUInt32LE(e), symtab.stroff + b.readUInt32LE(e) + 200)
          .replace(/\0.*$/s, '')
          .replace(/^_/, ''),
      );
    }
  }
  assert.ok(
    undef.some((s) => s.startsWith('napi_')),
    `${file}: napi_* are not left to Node (undefined)`,
  );
  Object.assign(notes, { minos, signed, dylibs: dylibs.join(' '), undefined: `${undef.length} (${undef.filter(nodeApi).length} napi/uv)` });
}

/** Checks every platform tarball in dist/; returns per-platform notes (sizes, glibc, ...). */
function checkAddons() {
  const work = fs.mkdtempSync(path.join(os.tmpdir(), `${PACKAGE}-addons-`));
  const report = {};
  try {
    for (const platform of PLATFORMS) {
      const tarball = path.join(root, 'dist', `${packageName(platform.key)}-${VERSION}.tgz`);
      assert.ok(fs.existsSync(tarball), `${tarball} is missing: run \`npm run pack:dist\``);
      const dir = path.join(work, platform.key);
      fs.mkdirSync(dir);
      execFileSync('tar', ['-xzf', tarball, '-C', dir]);
      const manifest = JSON.parse(fs.readFileSync(path.join(dir, 'package', 'package.json'), 'utf8'));
      assert.deepEqual([manifest.os, manifest.cpu, manifest.libc], [[platform.os], [platform.cpu], platform.libc && [platform.libc]]);
      assert.equal(manifest.main, addonFile(platform.key));
      const file = path.join(dir, 'package', addonFile(platform.key));
      const notes = { tarball: fs.statSync(tarball).size, addon: fs.statSync(file).size };
      (platform.os === 'darwin' ? checkMachO : checkElf)(file, platform, notes);
      report[platform.key] = notes;
    }
  } finally {
    fs.rmSync(work, { recursive: true, force: true });
  }
  return report;
}

if (require.main === module) {
  const report = checkAddons();
  for (const [key, notes] of Object.entries(report)) console.log(`ok: ${key} ${JSON.stringify(notes)}`);
}

module.exports = { checkAddons };
