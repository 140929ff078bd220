'use strict';
// What the bench scripts share: a free port, a median, and the processes of a process group.
const fs = require('node:fs');
const net = require('node:net');

/** A TCP port free on this machine right now (the kernel picks it). */
function freePort() {
  return new Promise((resolve, reject) => {
    const s = net
      .createServer()
      .on('error', reject)
      .listen(0, () => {
        const { port } = s.address();
        s.close(() => resolve(port));
      });
  });
}

/** The median of the finite numbers in `xs` (the mean of the middle two for an even count), or null. */
function median(xs) {
  const v = xs.filter((x) => typeof x === 'number' && Number.isFinite(x)).sort((a, b) => a - b);
  if (!v.length) return null;
  const m = Math.floor(v.length / 2);
  return v.length % 2 ? v[m] : (v[m - 1] + v[m]) / 2;
}

/** Fields of /proc/<pid>/stat: parent, process group, user and system time (clock ticks). */
function procStat(pid) {
  const text = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
  const fields = text.slice(text.lastIndexOf(')') + 2).split(' ');
  return { ppid: Number(fields[1]), pgrp: Number(fields[2]), utime: Number(fields[11]), stime: Number(fields[12]) };
}

/** The members of a process group (a setup's primary and its workers). */
function groupPids(pgid) {
  const pids = [];
  for (const name of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    try {
      if (procStat(name).pgrp === pgid) pids.push(Number(name));
    } catch {} // gone
  }
  return pids;
}

module.exports = { freePort, median, procStat, groupPids };
