// Compiled with `tsc --noEmit` by `npm test`: the package as an ES module user imports it,
// resolved through package.json "exports" (a self-reference by name).
import http from 'node:http';
import sticky, { listen } from 'sticky-rs';

const options: sticky.ClusterOptions = { concurrency: 2, port: 8080 };
const primary: sticky.Primary | undefined = sticky((callback) => callback(http.createServer()), options);
const isWorker: boolean = listen(http.createServer(), 8080, { workers: 2 });
console.log(primary?.address(), isWorker);
