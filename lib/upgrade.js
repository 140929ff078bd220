'use strict';
// Upgrading the whole server without refusing a connection (issue 22), nginx's way: the old
// primary starts the new one (same argv, cwd and environment as the old one started with, so it
// re-reads the app's code, and possibly a new Node) and passes it every listening socket as an
// inherited descriptor; nothing is closed. The new primary checks them (src/router/inherit.rs), forks
// its workers on them, starts accepting once every slot has a ready worker, and says so on a
// private pipe; only then does the old primary stop accepting on its copies, retire its workers
// as a shutdown does (without touching the sockets) and exit 0. If the new primary exits, or is
// not ready within readyTimeout, the old one goes on as if nothing happened.
//
// Also here: the pid file (written by whichever primary owns the sockets) and sd_notify.
const cluster = require('node:cluster');
const { spawn } = require('node:child_process');
const fs = require('node:fs');
const net = require('node:net');
const path = require('node:path');
const { native } = require('./binding');
const { warn, notice, log } = require('./log');

/** The environment marker a new primary finds its inherited descriptors in. */
const MARKER = 'STICKY_RS_UPGRADE';
/** The new primary's end of the pipe to the old one. */
const CONTROL_FD = 3;
/** A new primary that was asked to stop (rollback) and has not exited after this is killed. */
const KILL_AFTER = 5000;

// The environment and working directory as the primary started with them: a new primary starts
// as this one did, without what the app or sticky-rs added since.
const envAtLoad = { ...process.env };
delete envAtLoad[MARKER];
const cwdAtLoad = process.cwd();

/**
 * In a new primary: what the old one passed on (`{ parent, dispatch, fds }`), or null. Read
 * once, at load, and removed from the environment so that no worker or later child sees it; the
 * descriptors are made close-on-exec at once, so that no child inherits them.
 */
const inheritance = (() => {
  const text = process.env[MARKER];
  delete process.env[MARKER];
  if (!text || !cluster.isPrimary) return null;
  let marker;
  try {
    marker = JSON.parse(text);
  } catch {
    return null;
  }
  // Only the process the old primary started: not a grandchild that inherited the variable.
  if (!marker || marker.parent !== process.ppid || !Array.isArray(marker.fds)) return null;
  for (const fd of [CONTROL_FD, ...marker.fds]) {
    try {
      native.closeOnExec(fd);
    } catch {
      // Not open: the router's checks refuse it with a message.
    }
  }
  return marker;
})();

/** The pid file option, if any: written atomically (a rename), by the primary owning the sockets. */
function writePidFile(file) {
  if (!file) return;
  const tmp = `${file}.${process.pid}.tmp`;
  try {
    fs.writeFileSync(tmp, `${process.pid}\n`);
    fs.renameSync(tmp, file);
  } catch (err) {
    warn(`pidFile: cannot write ${file}: ${err.message}`);
    try {
      fs.unlinkSync(tmp);
    } catch {}
  }
}

/** At exit: removes the pid file only if it still names this process (not the new primary). */
function removePidFileAtExit(file) {
  if (!file) return;
  process.on('exit', () => {
    try {
      if (fs.readFileSync(file, 'utf8').trim() === String(process.pid)) fs.unlinkSync(file);
    } catch {}
  });
}

/** systemd `Type=notify`: tells it this process is the main one and ready. Failures are said. */
function sdNotify(message) {
  const socket = process.env.NOTIFY_SOCKET;
  if (!socket) return;
  try {
    native.sdNotify(socket, message);
  } catch (err) {
    warn(`NOTIFY_SOCKET ${socket}: cannot send ${JSON.stringify(message)}: ${err.message}`);
  }
}

/**
 * Router options of this process: with inherited sockets, those descriptors, and the dispatch
 * mode of the old primary when this one's was 'auto' (the sockets decide: a group or not).
 */
function routerOptions(options) {
  if (!inheritance) return options;
  const dispatch = options.dispatchFallback ? inheritance.dispatch : options.dispatch;
  return {
    ...options,
    dispatch,
    dispatchFallback: false,
    dispatchWhy: `${options.dispatchWhy}; inherited from the old primary (pid ${inheritance.parent})`,
    inherited: inheritance.fds,
  };
}

/**
 * Called once the primary listens (router open): installs the upgrade signal, the pid file of
 * a fresh start, and in a new primary the pipe to the old one.
 */
function started(primary) {
  const o = primary.options;
  primary.sharedSockets = Boolean(inheritance);
  removePidFileAtExit(o.pidFile);
  if (!inheritance) writePidFile(o.pidFile);
  if (o.upgradeSignal) {
    primary.onUpgradeSignal = () => {
      // A repeated signal is refused (said by upgrade()), not announced as a new start.
      if (!primary.upgrading) notice(`${o.upgradeSignal}: upgrading: starting a new primary`);
      upgrade(primary).catch(() => {}); // said where it fails
    };
    process.on(o.upgradeSignal, primary.onUpgradeSignal);
  }
  if (inheritance) {
    // The old primary's end closes when it exits: from then on the sockets are ours alone.
    const control = new net.Socket({ fd: CONTROL_FD, readable: true, writable: true });
    control.on('error', () => {});
    control.on('close', () => {
      primary.sharedSockets = false;
      primary.control = null;
      if (!primary.stopping) primary.emit('takeover', { previous: inheritance.parent });
    });
    control.resume();
    control.unref();
    primary.control = control;
  }
}

/**
 * Every slot has a ready worker for the first time. A new primary starts accepting, writes the
 * pid file and tells systemd and the old primary; a fresh one tells systemd.
 */
function ready(primary) {
  if (!inheritance) {
    sdNotify(`MAINPID=${process.pid}\nREADY=1`);
    return;
  }
  try {
    primary.router.accept();
  } catch (err) {
    warn(`upgrade: cannot start accepting: ${err.message}`);
    return;
  }
  writePidFile(primary.options.pidFile);
  sdNotify(`MAINPID=${process.pid}\nREADY=1`);
  if (primary.control) primary.control.write('ready\n');
  if (primary.options.debug) log('primary', `upgrade: every slot ready, told the old primary (pid ${inheritance.parent})`);
}

/** Stops accepting for a shutdown: on copies only while another primary holds the sockets. */
function stopAccepting(primary, drainMs) {
  if (primary.upgrading?.abort) primary.upgrading.abort('this primary is shutting down');
  if (primary.sharedSockets) primary.router.handOver();
  else primary.router.stopAccepting(drainMs);
}

/**
 * The old primary: starts a new one on this one's sockets. Resolves with `{ pid }` once it is
 * ready on every slot (this primary then retires its workers and exits 0); rejects, with the old
 * primary still serving, if it fails. One at a time.
 */
function upgrade(primary) {
  const o = primary.options;
  const refuse = (why) => {
    warn(`upgrade refused: ${why}`);
    return Promise.reject(new Error(`sticky-rs: upgrade refused: ${why}`));
  };
  if (o.adopt) return refuse("setupMaster: the workers are the app's own");
  if (primary.stopping) return refuse('this primary is shutting down');
  if (primary.upgrading) return refuse(`an upgrade is under way (new primary pid ${primary.upgrading.pid})`);
  if (primary.sharedSockets) return refuse('this primary is still taking over from the previous one');
  let copies;
  let execPath = process.execPath;
  try {
    if (o.upgradeExecPath) execPath = fs.realpathSync(path.resolve(cwdAtLoad, o.upgradeExecPath));
    copies = primary.router.listeningFds();
  } catch (err) {
    return refuse(err.message);
  }
  const fds = copies.map((c) => c.fd);
  const marker = { parent: process.pid, dispatch: o.dispatch, fds: fds.map((_, i) => CONTROL_FD + 1 + i) };
  let child;
  try {
    child = spawn(execPath, [...process.execArgv, ...process.argv.slice(1)], {
      cwd: cwdAtLoad,
      env: { ...envAtLoad, [MARKER]: JSON.stringify(marker) },
      stdio: ['inherit', 'inherit', 'inherit', 'pipe', ...fds],
    });
  } catch (err) {
    return refuse(`cannot start ${execPath}: ${err.message}`);
  } finally {
    for (const fd of fds) fs.closeSync(fd);
  }
  primary.router.pauseChecks(true);
  const started = Date.now();
  const run = { pid: child.pid };
  primary.upgrading = run;
  if (o.debug) log('primary', `upgrade: started the new primary, pid ${child.pid} (${execPath})`);
  return new Promise((resolve, reject) => {
    let done = false;
    // A binary that cannot be run (EACCES, ENOENT) gets 'error' and no 'exit'.
    const exited = new Promise((r) => {
      child.once('exit', (code, signal) => r({ code, signal }));
      child.once('error', () => {
        if (child.pid === undefined) r({ code: null, signal: null });
      });
    });
    const fail = (why) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      // Said always: the operator asked for an upgrade and this one keeps serving.
      warn(`upgrade failed: ${why}; this primary (pid ${process.pid}) keeps serving`);
      if (child.exitCode === null && child.signalCode === null) {
        child.kill('SIGTERM');
        const kill = setTimeout(() => child.kill('SIGKILL'), KILL_AFTER);
        exited.then(() => clearTimeout(kill));
      }
      exited.then(() => {
        if (child.stdio[CONTROL_FD]) child.stdio[CONTROL_FD].destroy();
        primary.upgrading = null;
        try {
          primary.router.pauseChecks(false);
        } catch {}
        reject(new Error(`sticky-rs: upgrade failed: ${why}`));
      });
    };
    run.abort = fail;
    const timer = setTimeout(
      () => fail(`the new primary (pid ${child.pid}) was not ready on every slot within readyTimeout (${o.readyTimeout} ms)`),
      o.readyTimeout,
    );
    child.once('error', (err) => fail(`cannot start ${execPath}: ${err.message}`));
    exited.then(
      ({ code, signal }) =>
        child.pid !== undefined &&
        fail(`the new primary (pid ${child.pid}) ${signal ? `was killed by ${signal}` : `exited with code ${code}`} before it was ready`),
    );
    let said = '';
    child.stdio[CONTROL_FD].on('error', () => {});
    child.stdio[CONTROL_FD].on('data', (chunk) => {
      said += chunk;
      if (done || !said.includes('ready\n')) return;
      if (primary.stopping) return fail('this primary is shutting down');
      done = true;
      clearTimeout(timer);
      notice(
        `upgrade: the new primary (pid ${child.pid}) is ready on every slot after ${Date.now() - started} ms; this primary (pid ${process.pid}) stops accepting, retires its workers and exits`,
      );
      // This process ends now as a shutdown does, but on copies of sockets the new one keeps.
      primary.sharedSockets = true;
      child.unref();
      child.stdio[CONTROL_FD].unref();
      resolve({ pid: child.pid });
      primary.exitAfter(primary.shutdown());
    });
  });
}

module.exports = { routerOptions, started, ready, stopAccepting, upgrade, inheritance: () => inheritance, MARKER };
