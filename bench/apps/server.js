'use strict';
// One tiny HTTP app behind the setup named by SETUP:
//   single          one Node process, no cluster
//   cluster-rr      node:cluster, SCHED_RR (the primary accepts and hands out round-robin)
//   cluster-none    node:cluster, SCHED_NONE (workers share the listen socket, the OS distributes)
//   reuseport       WORKERS plain Node processes (no cluster, no IPC), each its own listener with
//                   listen({ reusePort: true }) (Node >= 22.12): the kernel picks a process by the
//                   4-tuple hash, each has its own accept queue; the limit of any sticky design.
//                   This process only starts them (SETUP=reuseport-member) and waits.
//   sticky-session  sticky-session 1.1.2
//   sticky-cluster  sticky-cluster 0.3.5
//   socketio-sticky @socket.io/sticky 2.0.1 (least-connection; Socket.IO is always attached, it
//                   needs it; cluster IPC uses serialization: 'advanced')
//   sticky-rs       this package, default options (dispatch "auto": the kernel picks the slot on Linux)
//   sticky-rs-primary this package with dispatch: 'primary' (the primary's router accepts and passes)
//   sticky-rs-sid   this package's setupMaster/setupWorker (routeBy 'sid', least-connection),
//                   the same code as socketio-sticky but the require
// WORKERS and PORT from env. SOCKETIO=1 attaches a Socket.IO server (polling only matters here)
// to each worker's HTTP server: every 'msg' event is answered with an 'echo' event.
// Prints one JSON line {"event":"listening","pid":<primary pid>} once the setup can serve.
const cluster = require('node:cluster');
const http = require('node:http');

const port = Number(process.env.PORT);
const workers = Number(process.env.WORKERS || 2);
const socketio = process.env.SOCKETIO === '1';
const handler = (req, res) => res.end(String(process.pid));
const announce = () => console.log(JSON.stringify({ event: 'listening', pid: process.pid }));

function attachIo(server) {
  const { Server } = require('socket.io');
  const io = new Server(server, { serveClient: false });
  io.on('connection', (socket) => socket.on('msg', (data) => socket.emit('echo', data)));
  return io;
}
const maybeIo = (server) => (socketio ? attachIo(server) : undefined);

// Workers of the plain-cluster setups say when they can serve; the primary announces after all.
function announceWhenWorkersReady() {
  let ready = 0;
  cluster.on('message', (worker, msg) => {
    if (msg && msg.bench === 'ready' && ++ready === workers) announce();
  });
}
const workerReady = () => process.send({ bench: 'ready' });

switch (process.env.SETUP) {
  case 'single': {
    const server = http.createServer(handler);
    maybeIo(server);
    server.listen(port, announce);
    break;
  }
  case 'cluster-rr':
  case 'cluster-none':
    if (cluster.isPrimary) {
      cluster.schedulingPolicy = process.env.SETUP === 'cluster-rr' ? cluster.SCHED_RR : cluster.SCHED_NONE;
      announceWhenWorkersReady();
      for (let i = 0; i < workers; i++) cluster.fork();
    } else {
      const server = http.createServer(handler);
      maybeIo(server);
      server.listen(port, workerReady);
    }
    break;
  case 'reuseport': {
    // Plain processes in this one's process group (bench/run.js counts and kills the group).
    const { spawn } = require('node:child_process');
    let ready = 0;
    for (let i = 0; i < workers; i++) {
      const child = spawn(process.execPath, [__filename], {
        env: { ...process.env, SETUP: 'reuseport-member' },
        stdio: ['ignore', 'pipe', 'inherit'],
      });
      child.stdout.once('data', () => ++ready === workers && announce());
      child.once('exit', (code, signal) => {
        console.error(`reuseport member exited (${signal || code})`);
        process.exit(1);
      });
    }
    break;
  }
  case 'reuseport-member': {
    const server = http.createServer(handler);
    maybeIo(server);
    server.listen({ port, reusePort: true }, () => console.log('ready'));
    break;
  }
  case 'sticky-rs':
  case 'sticky-rs-primary':
    require('../..')(
      (cb) => {
        const server = http.createServer(handler);
        maybeIo(server);
        cb(server);
      },
      { concurrency: workers, port, dispatch: process.env.SETUP === 'sticky-rs-primary' ? 'primary' : undefined },
    );
    if (cluster.isPrimary) announce();
    break;
  case 'sticky-cluster':
    require('sticky-cluster')(
      (cb) => {
        const server = http.createServer(handler);
        maybeIo(server);
        cb(server);
      },
      { concurrency: workers, port },
    );
    if (cluster.isPrimary) setTimeout(announce, 200);
    break;
  case 'sticky-session': {
    const server = http.createServer(handler);
    if (!require('sticky-session').listen(server, port, { workers })) server.once('listening', announce);
    else maybeIo(server);
    break;
  }
  case 'socketio-sticky':
  case 'sticky-rs-sid': {
    const ours = process.env.SETUP === 'sticky-rs-sid';
    const { setupMaster, setupWorker } = require(ours ? '../..' : '@socket.io/sticky');
    if (cluster.isPrimary) {
      cluster.setupPrimary({ serialization: 'advanced' });
      const httpServer = http.createServer();
      setupMaster(httpServer, { loadBalancingMethod: 'least-connection' });
      let ready = 0;
      let listening = false;
      const check = () => ready === workers && listening && announce();
      httpServer.listen(port, () => {
        listening = true;
        check();
      });
      // sticky-rs: a worker serves once the router delivers to it ('ready'), after setupWorker.
      if (ours) {
        require('../..')
          .primary()
          .on('ready', () => {
            ready++;
            check();
          });
      } else {
        cluster.on('message', (worker, msg) => {
          if (msg && msg.bench === 'ready') {
            ready++;
            check();
          }
        });
      }
      for (let i = 0; i < workers; i++) cluster.fork();
    } else {
      const server = http.createServer(handler);
      setupWorker(attachIo(server));
      workerReady();
    }
    break;
  }
  default:
    throw new Error(`unknown SETUP ${process.env.SETUP}`);
}
