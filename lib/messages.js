'use strict';
// The IPC messages between the primary and a worker, all strings starting with the prefix.
// Anything else on the channel (e.g. @socket.io/cluster-adapter's) is someone else's.
const READY = 'ready'; // worker -> primary: its server is handed over; send the channel
const CHANNEL = 'channel'; // primary -> worker, with the channel's worker end as the handle
const SHUTDOWN = 'shutdown'; // primary -> worker: finish what is open and exit

module.exports = { READY, CHANNEL, SHUTDOWN };
