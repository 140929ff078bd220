'use strict';
// What requiring sticky-rs changes in the process that requires it (issue 19 item 12).
const { execFile } = require('node:child_process');
const path = require('node:path');

test('STICKY_RS_PRIMARY_PID reaches cluster workers only, not the primary or its other children', async () => {
  const out = await new Promise((resolve, reject) => {
    execFile(
      process.execPath,
      [path.join(__dirname, 'fixtures', 'primary-env.js')],
      { timeout: 20_000, encoding: 'utf8' },
      (err, stdout, stderr) => (err ? reject(new Error(`${err.message}\n${stderr}`)) : resolve(stdout)),
    );
  });
  const seen = JSON.parse(out.trim());
  expect(seen.primary).toBe('unset');
  expect(seen.child).toBe('unset');
  expect(seen.worker).toBe(String(seen.pid));
});
