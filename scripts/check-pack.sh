#!/usr/bin/env bash
# Packs sticky-rs, installs the tarball into a fresh project (which builds the addon from
# source through the install script) and runs a real primary + worker from there.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cd "$work"
tarball="$(npm pack "$root" --silent --pack-destination "$work" | tail -n 1)"
mkdir app && cd app
npm init -y >/dev/null
STICKY_RS_STRICT_BUILD=1 npm install --no-audit --no-fund "$work/$tarball"
cat > app.js <<'JS'
const http = require('node:http');
const cluster = require('node:cluster');
const sticky = require('sticky-rs');
const port = Number(process.env.PORT);
const primary = sticky((cb) => cb(http.createServer((req, res) => res.end(String(process.pid)))), { concurrency: 1, port });
if (cluster.isPrimary) {
  const done = (code) => { primary.shutdown(); setTimeout(() => process.exit(code), 100); };
  const timer = setTimeout(() => { console.error('no answer in 20 s'); done(1); }, 20000);
  http.get({ host: '127.0.0.1', port }, (res) => {
    let body = '';
    res.on('data', (c) => (body += c)).on('end', () => {
      clearTimeout(timer);
      const ok = res.statusCode === 200 && /^\d+$/.test(body) && Number(body) !== process.pid;
      console.log(ok ? `installed package served by worker pid ${body}` : `unexpected answer ${res.statusCode} ${body}`);
      if (!ok) done(1);
      else process.exit(0);
    });
  }).on('error', (e) => { console.error(e); done(1); });
}
JS
PORT="$(node -e "const s=require('net').createServer().listen(0,()=>{console.log(s.address().port);s.close()})")" timeout 60 node app.js
