'use strict';
// The newest glibc symbol version a shared object needs, read with `objdump -T` (binutils).
//   node scripts/glibc.js <file.node> [max]   prints it; exits 1 when it is above `max`
const { execFileSync } = require('node:child_process');

const parse = (v) => v.split('.').map(Number);
/** Compares dotted versions: negative, zero or positive. */
function compareVersions(a, b) {
  const [x, y] = [parse(a), parse(b)];
  for (let i = 0; i < Math.max(x.length, y.length); i++) {
    if ((x[i] ?? 0) !== (y[i] ?? 0)) return (x[i] ?? 0) - (y[i] ?? 0);
  }
  return 0;
}

/** `'2.17'`, or null when the file needs no versioned glibc symbol. */
function maxGlibc(file) {
  const symbols = execFileSync('objdump', ['-T', file], { encoding: 'utf8', maxBuffer: 64 * 1024 * 1024 });
  const versions = [...symbols.matchAll(/\bGLIBC_(\d+(?:\.\d+)+)\b/g)].map((m) => m[1]);
  return versions.sort(compareVersions).pop() ?? null;
}

if (require.main === module) {
  const [file, max] = process.argv.slice(2);
  const found = maxGlibc(file);
  console.log(`${file}: needs GLIBC_${found ?? '(none)'}`);
  if (max && found && compareVersions(found, max) > 0) {
    console.error(`above GLIBC_${max}: it would not load on older distributions`);
    process.exit(1);
  }
}

module.exports = { maxGlibc, compareVersions };
