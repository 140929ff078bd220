'use strict';
// One tiny HTTP app behind the router named by SETUP: sticky-rs, sticky-cluster, sticky-session.
// WORKERS and PORT from env. Prints one JSON line {"event":"listening","pid":<primary pid>}.
const cluster = require('node:cluster');
const http = require('node:http');

const port = Number(process.env.PORT);
const workers = Number(process.env.WORKERS || 2);
const handler = (req, res) => res.end(String(process.pid));
const announce = () => console.log(JSON.stringify({ event: 'listening', pid: process.pid }));

switch (process.env.SETUP) {
  case 'sticky-rs':
    require('../..')((cb) => cb(http.createServer(handler)), { concurrency: workers, port });
    if (cluster.isPrimary) announce();
    break;
  case 'sticky-cluster':
    require('sticky-cluster')((cb) => cb(http.createServer(handler)), { concurrency: workers, port });
    if (cluster.isPrimary) setTimeout(announce, 200);
    break;
  case 'sticky-session': {
    const server = http.createServer(handler);
    if (!require('sticky-session').listen(server, port, { workers })) server.once('listening', announce);
    break;
  }
  default:
    throw new Error(`unknown SETUP ${process.env.SETUP}`);
}
