'use strict';
// The terminal a process was started from, for SIGHUP: a closed terminal (its window, an ssh
// session) hangs up, and a program run in it ends, as a plain Node server does; any other SIGHUP
// (`kill -HUP`, a supervisor, nohup) asks for a reload.
const fs = require('node:fs');
const tty = require('node:tty');

/** Whether the controlling terminal can be opened (it is there and not hung up). */
function terminalAlive() {
  try {
    fs.closeSync(fs.openSync('/dev/tty', 'r+'));
    return true;
  } catch {
    return false; // ENXIO once hung up (no controlling terminal any more), EIO...
  }
}

/** Whether this process's stdio is a terminal that is its controlling terminal (at start). */
function startedOnTerminal() {
  return [0, 1, 2].some((fd) => tty.isatty(fd)) && terminalAlive();
}

/**
 * Writes to the dead terminal fail with EIO: not a reason to die (a warning written during the
 * shutdown would crash the process otherwise). Other errors keep Node's behaviour.
 */
function ignoreDeadTerminal() {
  for (const stream of [process.stdout, process.stderr]) {
    if (!stream.isTTY) continue;
    stream.on('error', (err) => {
      if (err.code !== 'EIO') throw err;
    });
  }
}

/**
 * Ends the process as the hang-up's default action does. Not process.exit(): Node restores the
 * terminal's modes on exit and aborts (SIGABRT, a core dump) when the terminal is gone (Node 20:
 * a CHECK on tcsetattr's EIO).
 */
function exitHungUp() {
  process.removeAllListeners('SIGHUP');
  process.kill(process.pid, 'SIGHUP');
}

module.exports = { terminalAlive, startedOnTerminal, ignoreDeadTerminal, exitHungUp };
