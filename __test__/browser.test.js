'use strict';
// The example chat in a real headless Chromium (playwright-core, the system's /usr/bin/chromium):
// two browser contexts, one forced to long-polling, drive the page's UI to join one room and talk.
// Both contexts come from 127.0.0.1, so both land on the same worker; cross-worker delivery is
// covered by example.test.js and redis.test.js.
const fs = require('node:fs');
const path = require('node:path');
const { freePort, processes } = require('./helpers');
const { startReadyExample, stopAllExamples, within } = require('./fixtures/example-harness');

const CHROMIUM = process.env.CHROMIUM_PATH || '/usr/bin/chromium';
const ARTIFACTS = path.join(__dirname, 'artifacts');
const IN_CI = process.env.CI === 'true';
const WORKERS = 2;
const ROOM = 'browsers';
const STEP = 15000; // per UI step; the machine is shared and Chromium starts slowly

let browser = null;
let browserPids = []; // Chromium's main process (a process group leader), found right after launch

/** Pids of this process's children named chromium/chrome (playwright starts it detached). */
function chromiumChildren() {
  return processes()
    .filter((p) => p.ppid === process.pid && /chrom/i.test(p.name))
    .map((p) => p.pid);
}

afterAll(async () => {
  try {
    if (browser) await within(browser.close(), 10000, 'browser.close()').catch((err) => console.warn(err.message));
  } finally {
    // Whatever close() left behind: kill Chromium's process group.
    for (const pid of browserPids) {
      try {
        process.kill(-pid, 'SIGKILL');
      } catch {}
    }
    await stopAllExamples();
  }
}, 30000);

/** Chromium, started once for the file. */
async function launch() {
  if (browser) return browser;
  const { chromium } = require('playwright-core');
  const before = new Set(chromiumChildren());
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    timeout: 30000,
    args: [
      '--headless',
      '--no-sandbox',
      '--disable-gpu',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
      '--no-first-run',
      '--disable-quic',
    ],
  });
  browserPids = chromiumChildren().filter((pid) => !before.has(pid));
  return browser;
}

/**
 * Opens the chat in a new page (of `context`, else of a new context); page errors and Socket.IO
 * answers other than 200 are collected, never ignored.
 */
async function openChat(url, label, context = null) {
  const page = await (context || (await browser.newContext({ viewport: { width: 900, height: 700 } }))).newPage();
  const problems = [];
  page.on('response', (res) => {
    if (res.url().includes('/socket.io/?') && res.status() !== 200 && res.status() !== 101) problems.push(`${res.status()} ${res.url()}`);
  });
  page.on('pageerror', (err) => problems.push(`pageerror: ${err.message}`));
  page.on('console', (msg) => {
    // The app has no favicon.ico: the 404 Chromium logs for it is not a problem of the page.
    if (msg.type() === 'error' && !/Failed to load resource.*404/.test(msg.text())) problems.push(`console.error: ${msg.text()}`);
  });
  await page.goto(url, { timeout: STEP });
  // Connected: the page shows the worker that holds its Socket.IO session.
  await page.waitForFunction(() => /^pid \d+, slot \d+$/.test(document.getElementById('io-worker').textContent), null, { timeout: STEP });
  return { label, context: page.context(), page, problems };
}

async function join(chat, name) {
  const { page } = chat;
  await page.fill('#name', name);
  await page.fill('#room', ROOM);
  await page.click('#join-button');
  await page.waitForFunction((want) => document.getElementById('member').textContent === want, `${name} in #${ROOM}`, { timeout: STEP });
  chat.name = name;
}

async function say(chat, text) {
  await chat.page.fill('#text', text);
  await chat.page.click('#send-button');
  // The input is cleared once the server acknowledged the message.
  await chat.page.waitForFunction(() => document.getElementById('text').value === '', null, { timeout: STEP });
}

/** Waits until `chat` shows the message `text` from `from`. */
async function sees(chat, from, text) {
  await chat.page.waitForFunction(
    ([f, t]) =>
      [...document.querySelectorAll('#messages li.chat')].some(
        (li) => li.querySelector('.from').textContent === `${f}: ` && li.querySelector('.text').textContent === t,
      ),
    [from, text],
    { timeout: STEP },
  );
}

const status = (chat) =>
  chat.page.evaluate(() => ({
    http: document.getElementById('http-worker').textContent,
    io: document.getElementById('io-worker').textContent,
    transport: document.getElementById('transport').textContent,
  }));

if (!fs.existsSync(CHROMIUM) && IN_CI) {
  test('Chromium is installed (required in CI)', () => {
    throw new Error(`Chromium was not found at ${CHROMIUM}; CI must install it (Debian: apt-get install chromium) or set CHROMIUM_PATH`);
  });
} else if (!fs.existsSync(CHROMIUM)) {
  console.warn(`browser.test.js SKIPPED: Chromium was not found at ${CHROMIUM} (install it, or set CHROMIUM_PATH)`);
  test.skip(`the chat in a real browser (skipped: no Chromium at ${CHROMIUM})`, () => {});
} else {
  test('two browsers (websocket and polling) join a room through the page and talk', async () => {
    const port = await freePort();
    const { url } = await startReadyExample({ PORT: String(port), WORKERS: String(WORKERS) });
    await launch();

    const ws = await openChat(`${url}/`, 'websocket');
    const polling = await openChat(`${url}/?transport=polling`, 'polling');
    await join(ws, 'alice');
    await join(polling, 'bob');

    await say(ws, 'hello from alice');
    await sees(polling, 'alice', 'hello from alice');
    await sees(ws, 'alice', 'hello from alice'); // the sender is a member too
    await say(polling, 'hi alice, bob here (long-polling)');
    await sees(ws, 'bob', 'hi alice, bob here (long-polling)');

    // The transport each page shows: polling stays polling; the other upgrades.
    await polling.page.waitForFunction(() => document.getElementById('transport').textContent === 'polling', null, { timeout: STEP });
    await ws.page.waitForFunction(() => document.getElementById('transport').textContent === 'websocket', null, { timeout: STEP });
    const shown = { websocket: await status(ws), polling: await status(polling) };
    for (const s of Object.values(shown)) {
      expect(s.io).toMatch(/^pid \d+, slot \d+$/);
      // Sticky: the page's /health request and its Socket.IO session reached the same worker.
      expect(s.http).toBe(s.io);
    }
    expect(shown.websocket.transport).toBe('websocket');
    expect(shown.polling.transport).toBe('polling');
    // Same address (127.0.0.1), same worker.
    expect(shown.websocket.io).toBe(shown.polling.io);

    fs.mkdirSync(ARTIFACTS, { recursive: true });
    const shots = [];
    for (const chat of [ws, polling]) {
      const file = path.join(ARTIFACTS, `browser-chat-${chat.label}.png`);
      await chat.page.screenshot({ path: file, timeout: STEP });
      shots.push(file);
    }
    expect({ websocket: ws.problems, polling: polling.problems }).toEqual({ websocket: [], polling: [] });
    console.log(`browser: ${JSON.stringify(shown)}; screenshots: ${shots.join(', ')}`);
  }, 120000);

  // routeBy 'sid': the page, its script and style, /health and the Socket.IO session share the
  // browser's pool of 6 keep-alive connections, which the router placed as new sessions on any
  // worker. 4 polling-only tabs in one context (one pool, several sessions) and 2 that upgrade.
  test("ROUTE_BY=sid: 4 polling-only tabs sharing one browser's pool and 2 websocket pages keep their sessions", async () => {
    const port = await freePort();
    const { url } = await startReadyExample({ PORT: String(port), WORKERS: '4', ROUTE_BY: 'sid' });
    await launch();
    const shared = await browser.newContext({ viewport: { width: 900, height: 700 } });
    const chats = [];
    for (let i = 0; i < 4; i++) chats.push(await openChat(`${url}/?transport=polling`, `polling-${i}`, shared));
    for (let i = 0; i < 2; i++) chats.push(await openChat(`${url}/`, `websocket-${i}`));
    for (const [i, chat] of chats.entries()) await join(chat, `user${i}`);
    for (const chat of chats) await say(chat, `hello from ${chat.name}`);
    for (const chat of chats) for (const other of chats) await sees(chat, other.name, `hello from ${other.name}`);
    for (const chat of chats.slice(4)) {
      await chat.page.waitForFunction(() => document.getElementById('transport').textContent === 'websocket', null, { timeout: STEP });
    }
    const shown = await Promise.all(chats.map(status));
    for (const [i, s] of shown.entries()) {
      expect(s.io).toMatch(/^pid \d+, slot \d+$/);
      expect(s.transport).toBe(i < 4 ? 'polling' : 'websocket');
    }
    expect(Object.fromEntries(chats.map((c) => [c.label, c.problems]))).toEqual(Object.fromEntries(chats.map((c) => [c.label, []])));
    console.log(`browser, ROUTE_BY=sid: ${JSON.stringify(shown)}`);
  }, 120000);
}
