'use strict';
// The cluster primary: starts the native router, forks one worker per slot, gives each worker
// its channel once its server is handed over, and replaces workers that exit.
const cluster = require('node:cluster');
const { EventEmitter } = require('node:events');
const fs = require('node:fs');
const net = require('node:net');
const { native, nodeError } = require('./binding');
const { log } = require('./log');
const { READY, CHANNEL, SHUTDOWN } = require('./messages');

const RESPAWN_MIN_DELAY = 100;
const RESPAWN_MAX_DELAY = 10_000;
const HEALTHY_AFTER = 30_000;

class Primary extends EventEmitter {
  constructor(options) {
    super();
    this.options = options;
    this.router = null;
    this.slots = [];
    this.closing = false;
  }

  /** Binds; on a bind error calls `onError` and forks nothing. */
  start(onError) {
    const o = this.options;
    try {
      this.router = new native.Router({
        host: o.host, port: o.port, backlog: o.backlog, slots: o.slots, queueLimit: o.queueLimit, debug: o.debug,
      });
    } catch (err) {
      onError(nodeError(err, 'listen', { address: o.host || '::', port: o.port }));
      return this;
    }
    if (o.debug) log('primary', `listening on ${JSON.stringify(this.address())}, ${o.slots} slot(s)`);
    for (let slot = 0; slot < o.slots; slot++) {
      this.slots.push({ worker: null, channel: null, delay: RESPAWN_MIN_DELAY, timer: null, bornAt: 0 });
      this.fork(slot);
    }
    this.onSignal = () => this.shutdown();
    process.once('SIGINT', this.onSignal);
    process.once('SIGTERM', this.onSignal);
    return this;
  }

  /** The address the router listens on, like `server.address()`. */
  address() {
    return this.router ? this.router.address() : null;
  }

  /** Per-slot pids and counters. */
  stats() {
    if (!this.router) return null;
    const native = this.router.stats();
    return {
      acceptErrors: native.acceptErrors,
      slots: native.slots.map((counters, i) => ({
        pid: this.slots[i].worker ? this.slots[i].worker.process.pid : null,
        ...counters,
      })),
    };
  }

  fork(index) {
    const o = this.options;
    const slot = this.slots[index];
    slot.timer = null;
    slot.bornAt = Date.now();
    const worker = cluster.fork(o.env(index));
    slot.worker = worker;
    if (o.debug) log('primary', `slot ${index}: forked worker #${worker.id} (pid ${worker.process.pid})`);
    this.emit('fork', { slot: index, worker });
    // An IPC failure (ERR_IPC_CHANNEL_CLOSED...) concerns this worker only; 'exit' follows.
    worker.on('error', (err) => {
      if (o.debug) log('primary', `slot ${index}: worker #${worker.id}: ${err.message}`);
    });
    worker.on('message', (message) => {
      if (message !== o.prefix + READY || slot.worker !== worker || slot.channel) return;
      this.sendChannel(index, worker);
    });
    worker.on('exit', (code, signal) => this.onExit(index, worker, code, signal));
  }

  sendChannel(index, worker) {
    const o = this.options;
    const slot = this.slots[index];
    let end;
    try {
      slot.channel = this.router.openChannel(index);
      end = new net.Socket({ fd: slot.channel.fd, readable: false, writable: false });
    } catch (err) {
      if (slot.channel) fs.closeSync(slot.channel.fd);
      if (o.debug) log('primary', `slot ${index}: cannot open a channel: ${err.message}`);
      worker.process.kill('SIGKILL');
      return;
    }
    // Node closes our copy of the worker's end once the worker has it.
    worker.send(o.prefix + CHANNEL, end, (err) => {
      if (err) end.destroy();
    });
    if (o.debug) log('primary', `slot ${index}: worker #${worker.id} is ready, channel ${slot.channel.id} sent`);
    this.emit('ready', { slot: index, worker });
  }

  onExit(index, worker, code, signal) {
    const o = this.options;
    const slot = this.slots[index];
    if (slot.worker !== worker) return;
    if (slot.channel) this.router.release(slot.channel.id);
    slot.channel = null;
    slot.worker = null;
    if (o.debug) log('primary', `slot ${index}: worker #${worker.id} exited (${signal || code})`);
    this.emit('exit', { slot: index, worker, code, signal });
    if (this.closing) {
      if (this.slots.every((s) => !s.worker)) this.finish(0);
      return;
    }
    // Crash loops back off; a worker that lived long enough resets the delay.
    if (Date.now() - slot.bornAt >= HEALTHY_AFTER) slot.delay = RESPAWN_MIN_DELAY;
    const delay = slot.delay;
    slot.delay = Math.min(slot.delay * 2, RESPAWN_MAX_DELAY);
    this.emit('respawn', { slot: index, delay });
    slot.timer = setTimeout(() => this.fork(index), delay);
  }

  /** Stops accepting, asks every worker to finish and exit, and resolves when all are gone. */
  shutdown() {
    if (this.closing) return this.closed;
    this.closing = true;
    this.closed = new Promise((resolve) => {
      this.resolveClosed = resolve;
    });
    const o = this.options;
    if (o.debug) log('primary', 'shutting down');
    process.removeListener('SIGINT', this.onSignal);
    process.removeListener('SIGTERM', this.onSignal);
    // A second signal forces the exit.
    this.onForce = () => this.finish(1);
    process.once('SIGINT', this.onForce);
    process.once('SIGTERM', this.onForce);
    if (this.router) this.router.close();
    for (const slot of this.slots) {
      clearTimeout(slot.timer);
      if (slot.worker && slot.worker.isConnected()) slot.worker.send(o.prefix + SHUTDOWN, () => {});
    }
    this.hardTimer = setTimeout(() => this.finish(1), o.hardShutdownDelay);
    this.hardTimer.unref();
    if (this.slots.every((s) => !s.worker)) this.finish(0);
    return this.closed;
  }

  finish(code) {
    clearTimeout(this.hardTimer);
    for (const slot of this.slots) if (slot.worker) slot.worker.process.kill('SIGKILL');
    if (this.options.debug) log('primary', `exiting with code ${code}`);
    this.resolveClosed(code);
    process.exit(code);
  }
}

function startPrimary(options, onError) {
  return new Primary(options).start(onError);
}

module.exports = { startPrimary };
