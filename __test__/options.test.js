'use strict';
// Every option of both APIs, against the README's options table: a falsy value means the
// README's default, valid values (strings of digits included) are taken, invalid ones are
// refused with an error naming the option, and contradictory combinations name both options.
// Then real primaries started with string counts and falsy values.
const cluster = require('node:cluster');
const fs = require('node:fs');
const http = require('node:http');
const os = require('node:os');
const path = require('node:path');
const sticky = require('..');
const { clusterOptions, sessionOptions } = require('../lib/options');
const { freePort, clientIp, startFixture, stopAll, get } = require('./helpers');

afterEach(stopAll);

const start = (cb) => cb(http.createServer());
const FALSY = [undefined, null, false, 0, '', NaN];

/** The README's options table: [{ name, api, defaultText }]. */
function readmeOptions() {
  const readme = fs.readFileSync(path.join(__dirname, '..', 'README.md'), 'utf8');
  const table = readme
    .split('### Options')[1]
    .split('\n\n')
    .find((block) => block.startsWith('| option |'));
  return table
    .split('\n')
    .slice(2)
    .map((row) => {
      const [, name, api, defaultText] = row.split('|').map((c) => c.trim());
      return { name: name.replace(/`/g, ''), api, defaultText };
    });
}

/** What a README default means once normalized, and where the normalized options keep it. */
const README_DEFAULTS = {
  'number of CPUs': os.availableParallelism(),
  '`::` (dual-stack)': '',
  '`[]`': [],
  '`{}`': {},
  "`'djb2'`": 'djb2',
  "`'address'`": 'address',
  "`'least-connection'`": 'least-connection',
  // 'auto' is kernel dispatch on Linux when routing by address (the default routeBy).
  "`'auto'`": process.platform === 'linux' ? 'kernel' : 'primary',
  "`'sticky-cluster:'`": 'sticky-cluster:',
  false: false,
  none: null,
};
const normalized = {
  concurrency: (o) => o.slots,
  workers: (o) => o.slots,
  port: (o) => o.listeners[0].port,
  backlog: (o) => o.listeners[0].backlog,
  host: (o) => o.listeners[0].host,
  env: (o) => o.env(3),
  listeners: (o) => o.listeners.length,
  errorHandler: (o) => o.errorHandler.name,
};
const SPECIAL_DEFAULTS = {
  env: { sticky: { stickycluster_worker_index: 3 }, listen: {} },
  listeners: { sticky: 1 },
  errorHandler: { sticky: 'defaultErrorHandler' },
};

/** Valid values (as given → as normalized) and invalid ones, per option. */
const VALUES = {
  concurrency: {
    valid: [
      [3, 3],
      ['4', 4],
    ],
    invalid: [
      ['four', TypeError],
      ['4.5', TypeError],
      ['-1', TypeError],
      [-1, RangeError],
      [2.5, RangeError],
      ['0', RangeError],
    ],
  },
  workers: {
    valid: [
      [3, 3],
      ['4', 4],
    ],
    invalid: [
      ['four', TypeError],
      [0.5, RangeError],
      ['-1', TypeError],
    ],
  },
  port: {
    valid: [
      [8081, 8081],
      ['8082', 8082],
    ],
    invalid: [
      ['http', TypeError],
      [70000, RangeError],
      [-5, RangeError],
      ['80.5', TypeError],
    ],
  },
  env: { valid: [], invalid: [] }, // per API below
  hardShutdownDelay: {
    valid: [
      [5000, 5000],
      ['5000', 5000],
    ],
    invalid: [
      [-1, RangeError],
      ['5s', TypeError],
    ],
  },
  errorHandler: { valid: [], invalid: [['log', TypeError]] },
  debug: {
    valid: [
      [true, true],
      ['connections', true],
    ],
    invalid: [
      ['false', TypeError],
      ['true', TypeError],
      [1, TypeError],
    ],
  },
  prefix: { valid: [['app:', 'app:']], invalid: [[7, TypeError]] },
  host: {
    valid: [
      ['127.0.0.1', '127.0.0.1'],
      ['::', ''],
    ],
    invalid: [[42, TypeError]],
  },
  backlog: {
    valid: [
      [64, 64],
      ['64', 64],
    ],
    invalid: [
      [-1, RangeError],
      ['many', TypeError],
    ],
  },
  queueLimit: {
    valid: [
      [0, 0],
      ['0', 0],
      [5, 5],
      ['5', 5],
    ],
    invalid: [
      [-1, RangeError],
      ['5.5', TypeError],
    ],
  },
  queueTimeout: {
    valid: [
      [100, 100],
      ['100', 100],
    ],
    invalid: [
      [-1, RangeError],
      [2 ** 31, RangeError],
    ],
  },
  readyTimeout: {
    valid: [
      [100, 100],
      ['100', 100],
    ],
    invalid: [
      [1.5, RangeError],
      ['1.5', TypeError],
    ],
  },
  respawnDelay: {
    valid: [
      [50, 50],
      ['50', 50],
    ],
    invalid: [[-50, RangeError]],
  },
  maxRespawnDelay: {
    valid: [
      [20000, 20000],
      ['20000', 20000],
    ],
    invalid: [[-1, RangeError]],
  },
  respawnResetAfter: { valid: [[1000, 1000]], invalid: [['soon', TypeError]] },
  maxRestarts: {
    valid: [
      [3, 3],
      ['3', 3],
      [Infinity, Infinity],
    ],
    invalid: [
      [-3, RangeError],
      ['many', TypeError],
    ],
  },
  restartWindow: {
    valid: [
      [1000, 1000],
      ['1000', 1000],
    ],
    invalid: [[-1, RangeError]],
  },
  hash: { valid: [['djb2-mix', 'djb2-mix']], invalid: [['md5', TypeError]] },
  listeners: {
    valid: [[[{ port: '80' }, { port: 443 }], 2]],
    invalid: [
      [[], TypeError],
      [[{ port: 'x' }], TypeError],
    ],
  },
  routeBy: { valid: [], invalid: [['x forwarded', TypeError]] }, // needs trustedProxies: below
  trustedProxies: { valid: [], invalid: [['10.0.0.1', TypeError]] },
  peekLimit: { valid: [], invalid: [] },
  peekTimeout: { valid: [], invalid: [] },
  loadBalancingMethod: {
    valid: [],
    invalid: [
      ['fastest', TypeError],
      ['random', TypeError],
    ],
  }, // needs routeBy 'sid': below
  node: {
    valid: [],
    invalid: [
      ['web-1', RangeError],
      ['a'.repeat(17), RangeError],
      [7, TypeError],
      ['web1', TypeError],
    ],
  }, // needs routeBy 'sid': below
  upgradeSignal: {
    valid: [
      ['SIGUSR2', 'SIGUSR2'],
      ['SIGWINCH', 'SIGWINCH'],
    ],
    invalid: [
      ['SIGTERM', RangeError],
      ['SIGHUP', RangeError],
      ['USR2', RangeError],
      [12, TypeError],
    ],
  },
  upgradeExecPath: { valid: [['/usr/local/bin/node', '/usr/local/bin/node']], invalid: [[true, TypeError]] },
  pidFile: { valid: [['/run/app.pid', '/run/app.pid']], invalid: [[{}, TypeError]] },
  dispatch: {
    valid: [
      ['primary', 'primary'],
      ['kernel', 'kernel'],
      ['auto', process.platform === 'linux' ? 'kernel' : 'primary'],
    ],
    invalid: [
      ['fast', TypeError],
      [3, TypeError],
    ],
  },
};

function normalize(api, options) {
  return api === 'sticky' ? clusterOptions(start, options) : sessionOptions(http.createServer(), 0, options);
}

const rows = readmeOptions();

test('the README table lists every option of both APIs', () => {
  const listed = (api) =>
    rows
      .filter((r) => r.api === api || r.api === 'both')
      .map((r) => r.name)
      .sort();
  const known = (api) => {
    try {
      normalize(api, { qqqqqqqqqq: 1 }); // near no option's name: no suggestion, the full list
    } catch (err) {
      return /\(known: (.*)\)/.exec(err.message)[1].split(', ').sort();
    }
    return [];
  };
  // `port` is the listen API's argument, not an option.
  expect(listed('sticky')).toEqual(known('sticky'));
  expect(listed('listen').filter((n) => n !== 'port')).toEqual(known('listen'));
});

describe.each(
  rows.flatMap((row) => (row.api === 'both' ? ['sticky', 'listen'] : [row.api]).map((api) => [row.name, api, row.defaultText])),
)('%s (%s)', (name, api, defaultText) => {
  const read = normalized[name] || ((o) => o[name]);
  const expected = SPECIAL_DEFAULTS[name]
    ? SPECIAL_DEFAULTS[name][api]
    : defaultText in README_DEFAULTS
      ? README_DEFAULTS[defaultText]
      : Number(defaultText);

  test('falsy means the README default', () => {
    if (name === 'port' && api === 'listen') return; // an argument: 0 is a free port (tested with a real primary)
    expect(expected).not.toBeNaN();
    for (const falsy of FALSY) {
      const value = name === 'queueLimit' && falsy === 0 ? 1024 : expected;
      if (name === 'queueLimit' && falsy === 0) {
        expect(normalize(api, { queueLimit: 0 }).queueLimit).toBe(0);
        continue;
      }
      expect([falsy, read(normalize(api, { [name]: falsy }))]).toEqual([falsy, value]);
    }
  });

  test('valid values are taken, strings of digits as numbers', () => {
    for (const [given, taken] of VALUES[name].valid) {
      expect(read(normalize(api, { [name]: given }))).toEqual(taken);
    }
  });

  test('invalid values throw naming the option and the value', () => {
    const invalid = [...VALUES[name].invalid];
    if (name === 'env') invalid.push(api === 'sticky' ? [{ a: 1 }, TypeError] : ['X=1', TypeError]);
    for (const [given, type] of invalid) {
      const call = () => normalize(api, { [name]: given });
      expect(call).toThrow(type);
      expect(call).toThrow(new RegExp(`^sticky-rs: option "${name}`));
    }
  });
});

test('behind-a-proxy options: taken with routeBy, refused without it', () => {
  const proxy = { routeBy: 'x-forwarded-for', trustedProxies: ['10.0.0.0/8'] };
  expect(clusterOptions(start, { ...proxy, peekLimit: '4096', peekTimeout: '500' })).toMatchObject({
    peekLimit: 4096,
    peekTimeout: 500,
    routeBy: 'x-forwarded-for',
  });
  for (const [name, value] of [
    ['trustedProxies', ['::1']],
    ['peekLimit', 4096],
    ['peekTimeout', 500],
  ]) {
    expect(() => clusterOptions(start, { [name]: value })).toThrow(new RegExp(`"${name}" has no effect with "routeBy": 'address'`));
    expect(() => clusterOptions(start, { [name]: value, routeBy: 'address' })).toThrow(TypeError);
  }
  expect(() => clusterOptions(start, { ...proxy, peekLimit: 10 })).toThrow(RangeError);
});

test("routeBy 'sid': any peer, no trustedProxies needed; loadBalancingMethod taken with it", () => {
  expect(clusterOptions(start, { routeBy: 'sid' })).toMatchObject({
    routeBy: 'sid',
    loadBalancingMethod: 'least-connection',
    trustedProxies: [],
  });
  expect(sessionOptions(http.createServer(), 0, { routeBy: 'sid', loadBalancingMethod: 'round-robin', peekTimeout: 500 })).toMatchObject({
    routeBy: 'sid',
    loadBalancingMethod: 'round-robin',
    peekTimeout: 500,
  });
  expect(() => clusterOptions(start, { routeBy: 'sid', loadBalancingMethod: 'fastest' })).toThrow(/"loadBalancingMethod" must be one of/);
});

test("node: with routeBy 'sid' (and setupMaster), a name of 1-16 characters [a-z0-9]; else refused before anything starts", () => {
  expect(clusterOptions(start, { routeBy: 'sid', node: 'web1' })).toMatchObject({ routeBy: 'sid', node: 'web1' });
  expect(sessionOptions(http.createServer(), 0, { routeBy: 'sid', node: '0123456789abcdef' })).toMatchObject({ node: '0123456789abcdef' });
  expect(clusterOptions(start, { routeBy: 'sid' }).node).toBe(null);
  for (const bad of ['Web1', 'web.1', 'a'.repeat(17), ' web1']) {
    expect(() => sticky(start, { routeBy: 'sid', node: bad })).toThrow(RangeError);
    expect(() => sticky(start, { routeBy: 'sid', node: bad })).toThrow(
      `option "node" must be 1 to 16 characters [a-z0-9], got ${JSON.stringify(bad)}`,
    );
  }
  expect(() => sticky(start, { routeBy: 'sid', node: ['web1'] })).toThrow(TypeError);
  expect(() => sticky(start, { node: 'web1' })).toThrow(
    /option "node" names this server in Socket.IO session ids, which only "routeBy": 'sid' routes by/,
  );
  expect(() => sticky.listen(http.createServer(), 0, { routeBy: 'x-forwarded-for', trustedProxies: ['10.0.0.1'], node: 'web1' })).toThrow(
    TypeError,
  );
  expect(() => sticky.setupMaster(http.createServer(), { node: 'Web1' })).toThrow(RangeError);
  expect(Object.keys(cluster.workers)).toHaveLength(0);
});

test('contradictory combinations name both options', () => {
  expect(() => sticky(start, { respawnDelay: 5000, maxRespawnDelay: 1000 })).toThrow(
    /"respawnDelay" \(5000\) must not be greater than "maxRespawnDelay" \(1000\)/,
  );
  expect(() => sticky(start, { respawnDelay: 20000 })).toThrow(/"respawnDelay" \(20000\).*"maxRespawnDelay" \(10000, the default\)/);
  expect(() => sticky.listen(http.createServer(), 0, { respawnDelay: '20000', maxRespawnDelay: '10000' })).toThrow(RangeError);
  expect(() => sticky(start, { listeners: [{ port: 80 }], host: '::1' })).toThrow(/either "listeners" or "port"\/"host"/);
  expect(Object.keys(cluster.workers)).toHaveLength(0);
});

test('a real primary started with string counts and falsy values serves on every worker', async () => {
  const port = await freePort();
  const app = startFixture('ops-app.js', {
    OPTIONS: JSON.stringify({
      concurrency: '3',
      port: String(port),
      backlog: 0,
      hardShutdownDelay: '5000',
      readyTimeout: '',
      debug: false,
      host: null,
    }),
  });
  for (let slot = 0; slot < 3; slot++) await app.next((e) => e.event === 'ready' && e.slot === slot);
  expect(app.events.filter((e) => e.event === 'fork')).toHaveLength(3);
  const answers = await Promise.all(Array.from({ length: 30 }, (_, i) => get(port, clientIp(i))));
  expect(new Set(answers.map((a) => a.body.index))).toEqual(new Set(['0', '1', '2']));
  app.child.kill('SIGTERM');
  expect(await app.exited).toEqual({ code: 0, signal: null });
});
